//! Which model names the gateway answers to: the one place every route resolves the name a
//! client asked for (the generating routes through the preamble, `/v1/models/{id}`, Ollama's
//! `/api/show`, `count_tokens`).
//!
//! By default every name is served by the one agent, as single-model local servers do: Claude
//! Code asks for its own `claude-…` names (a main one and a small one for background calls),
//! Codex and aider for theirs, and each gets the agent. `LOCAL_PROVIDER_MODEL_ALIASES` narrows
//! that to `MODEL_NAME` and the names matching its globs; other names get a 404
//! `model_not_found` in each API's shape.
use crate::config::{ModelAliases, Settings};
use crate::error::Error;

/// The longest model name accepted; longer is a 400 naming `model`. A name is echoed in every
/// streamed chunk and written to the audit log, so it stays short.
pub const MAX_MODEL_NAME_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub struct Models {
    /// `MODEL_NAME`: the one agent's name, listed first.
    served: String,
    aliases: ModelAliases,
}

impl Models {
    pub fn of(settings: &Settings) -> Self {
        Self {
            served: settings.model_name.clone(),
            aliases: settings.model_aliases.clone(),
        }
    }

    /// Whether `requested` is answered here. Ollama clients add `:latest` to a name, so a name
    /// with it is answered when the name without it is.
    pub fn serves(&self, requested: &str) -> bool {
        let bare = requested.strip_suffix(":latest");
        let matches = |name: &str| match &self.aliases {
            ModelAliases::Any => true,
            ModelAliases::Only(globs) => {
                name == self.served || globs.iter().any(|g| g.matches(name))
            }
        };
        matches(requested) || bare.is_some_and(matches)
    }

    /// `Ok` when `requested` is served here; otherwise the 404 every API renders in its shape
    /// (or a 400 for a name no client would send).
    pub fn resolve(&self, requested: &str) -> Result<(), Error> {
        if requested.trim().is_empty() {
            return Err(crate::validate::invalid(
                "model",
                format!("expected a model name, e.g. `{}`", self.served),
            ));
        }
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

    /// The names listed by `/v1/models`, `/api/tags` and `/api/ps`: `MODEL_NAME`, then each
    /// alias that is a plain name rather than a pattern. Names only a pattern matches are
    /// served but not listed (a list cannot hold them).
    pub fn listed(&self) -> Vec<&str> {
        let mut names = vec![self.served.as_str()];
        if let ModelAliases::Only(globs) = &self.aliases {
            for glob in globs {
                let name = glob.as_str();
                let literal = !name.contains(['*', '?', '[', ']']);
                if literal && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn models(aliases: Option<&str>) -> Models {
        Models {
            served: "cursor-agent-local".into(),
            aliases: ModelAliases::parse(aliases).unwrap(),
        }
    }

    #[test]
    fn by_default_every_name_is_served_and_only_the_configured_one_listed() {
        let m = models(None);
        for name in [
            "cursor-agent-local",
            "claude-sonnet-4-5-20250929",
            "claude-haiku-4-5-20251001",
            "gpt-5-codex",
            "openai/whatever:latest",
        ] {
            assert!(m.resolve(name).is_ok(), "{name}");
        }
        assert_eq!(m.listed(), ["cursor-agent-local"]);
    }

    #[test]
    fn aliases_narrow_and_the_rest_is_model_not_found() {
        let m = models(Some("claude-*,gpt-4o,o[0-9]-mini"));
        for name in [
            "cursor-agent-local",
            "cursor-agent-local:latest",
            "claude-haiku-4-5-20251001",
            "gpt-4o",
            "gpt-4o:latest",
            "o3-mini",
        ] {
            assert!(m.resolve(name).is_ok(), "{name}");
        }
        for name in ["gpt-4o-mini", "Claude-x", "o3x-mini", "llama3"] {
            let err = m.resolve(name).unwrap_err();
            assert!(matches!(err, Error::ModelNotFound { .. }), "{name}");
            assert_eq!(err.status(), 404);
            let body = err.body();
            assert_eq!(body["error"]["code"], "model_not_found");
            assert_eq!(body["error"]["param"], "model");
        }
        assert_eq!(m.listed(), ["cursor-agent-local", "gpt-4o"]);
    }

    #[test]
    fn names_no_client_would_send_are_a_400() {
        let m = models(None);
        for name in ["", "  ", &"m".repeat(MAX_MODEL_NAME_BYTES + 1)] {
            let err = m.resolve(name).unwrap_err();
            assert_eq!(err.status(), 400, "{name:?}");
            assert_eq!(err.body()["error"]["param"], "model");
        }
        assert!(m.resolve(&"m".repeat(MAX_MODEL_NAME_BYTES)).is_ok());
    }
}
