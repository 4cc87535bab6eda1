//! Which model names the gateway answers to: the one place every route resolves the name a
//! client asked for (the generating routes through the preamble, `/v1/models/{id}`, Ollama's
//! `/api/show`).
use crate::config::Settings;
use crate::error::Error;

/// The longest model name accepted; longer is a 400 naming `model`. A name is echoed in every
/// streamed chunk, so it stays short.
pub const MAX_MODEL_NAME_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub struct Models {
    /// `MODEL_NAME`: the one agent's name, listed first.
    served: String,
}

impl Models {
    pub fn of(settings: &Settings) -> Self {
        Self {
            served: settings.model_name.clone(),
        }
    }

    /// The configured name, also as `name:latest` the way Ollama-style clients write it.
    pub fn serves(&self, requested: &str) -> bool {
        requested == self.served
            || requested
                .strip_suffix(":latest")
                .is_some_and(|base| base == self.served)
    }

    /// `Ok` when `requested` is served here; otherwise the 404 every API renders in its shape.
    pub fn resolve(&self, requested: &str) -> Result<(), Error> {
        if requested.len() > MAX_MODEL_NAME_BYTES {
            return Err(crate::validate::invalid(
                "model",
                format!(
                    "expected a model name of at most {MAX_MODEL_NAME_BYTES} bytes, got {} bytes",
                    requested.len()
                ),
            ));
        }
        if self.serves(requested) {
            Ok(())
        } else {
            Err(Error::ModelNotFound {
                requested: requested.to_owned(),
                served: self.served.clone(),
            })
        }
    }

    /// The names listed by `/v1/models` and `/api/tags`.
    pub fn listed(&self) -> Vec<&str> {
        vec![self.served.as_str()]
    }
}
