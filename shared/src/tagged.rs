//! Frames of both wire protocols are JSON objects whose `type` names the variant
//! (docs/PROTOCOL.md). serde's own internally tagged enums read every such object into a buffer
//! before they decode it; [`frame_enum!`] defines an enum whose decoding reads the first key and,
//! when it is `type`, decodes the variant straight from the rest of the object. A `type` further
//! in costs only the fields before it, which are held as [`serde_json::Value`]s until `type`
//! comes (never more than the frame, which each protocol bounds). Encoding is serde's internally tagged one, which writes `type` first.
//!
//! The wire names of the variants come from the same definition ([`Tagged::types`]), so a list of
//! known types cannot drift from the enum.
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, StringDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, IntoDeserializer, MapAccess,
    VariantAccess, Visitor,
};
use serde::forward_to_deserialize_any;
use serde::Deserialize as _;
use serde_json::Value;

/// An enum whose variants travel as JSON objects tagged by `type`.
pub trait Tagged: Sized {
    /// The wire names of the variants, in definition order.
    fn types() -> &'static [&'static str];

    /// Decodes the variant from serde's externally tagged view of it: an enum whose variant is
    /// the `type` and whose content is the rest of the object.
    fn decode_variant<'de, D: Deserializer<'de>>(variant: D) -> Result<Self, D::Error>;
}

/// A frame, or the `type` of one this side does not know (the rest of it skipped).
#[derive(Debug, PartialEq)]
pub enum Decoded<T> {
    Known(T),
    Unknown(String),
}

impl<'de, T: Tagged> de::Deserialize<'de> for Decoded<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FrameVisitor(PhantomData))
    }
}

/// The `Deserialize` of a [`frame_enum!`] enum: an unknown `type` is an error naming it.
pub fn deserialize<'de, T: Tagged, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    match Decoded::<T>::deserialize(deserializer)? {
        Decoded::Known(frame) => Ok(frame),
        Decoded::Unknown(kind) => Err(de::Error::unknown_variant(&kind, T::types())),
    }
}

struct FrameVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for FrameVisitor<T> {
    type Value = Decoded<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with a `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Fields before `type`: only when a peer does not write it first.
        let mut before: Vec<(String, Value)> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let Key::Other(name) = key else {
                let tag = map.next_value_seed(TagSeed)?;
                if !T::types().contains(&tag.as_ref()) {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    return Ok(Decoded::Unknown(tag.into_owned()));
                }
                let rest = Rest {
                    before: before.into_iter(),
                    value: None,
                    map,
                };
                return T::decode_variant(Variant { tag, rest }).map(Decoded::Known);
            };
            before.push((name, map.next_value()?));
        }
        Err(de::Error::missing_field("type"))
    }
}

enum Key {
    Type,
    Other(String),
}

/// Tells `type` from any other key without allocating for it.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(if key == "type" {
            Key::Type
        } else {
            Key::Other(key.to_owned())
        })
    }
}

/// The value of `type`, borrowed from the input when it can be.
struct TagSeed;

impl<'de> DeserializeSeed<'de> for TagSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TagSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string in the field `type`")
    }

    fn visit_borrowed_str<E: de::Error>(self, tag: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(tag))
    }

    fn visit_str<E: de::Error>(self, tag: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(tag.to_owned()))
    }

    fn visit_string<E: de::Error>(self, tag: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(tag))
    }
}

/// The object's fields other than `type`: those held from before it, then the rest as read.
struct Rest<A> {
    before: std::vec::IntoIter<(String, Value)>,
    value: Option<Value>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Rest<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.before.next() {
            Some((key, value)) => {
                self.value = Some(value);
                let key: StringDeserializer<A::Error> = key.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(value).map_err(de::Error::custom),
            None => self.map.next_value_seed(seed),
        }
    }
}

/// serde's externally tagged view of a frame: the variant is `tag`, its content `rest`.
struct Variant<'de, A> {
    tag: Cow<'de, str>,
    rest: Rest<A>,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Variant<'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Variant<'de, A> {
    type Error = A::Error;
    type Variant = Rest<A>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Rest<A>), A::Error> {
        let tag: de::value::StrDeserializer<A::Error> = self.tag.as_ref().into_deserializer();
        Ok((seed.deserialize(tag)?, self.rest))
    }
}

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Rest<A> {
    type Error = A::Error;

    fn unit_variant(mut self) -> Result<(), A::Error> {
        while self.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        seed.deserialize(MapAccessDeserializer::new(self))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, A::Error> {
        MapAccessDeserializer::new(self).deserialize_any(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        MapAccessDeserializer::new(self).deserialize_any(visitor)
    }
}

/// The variant names an externally tagged `Deserialize` declares: what it passes to
/// `deserialize_enum`, caught before anything is read.
pub fn variant_names<T>(
    deserialize: fn(NamesProbe) -> Result<T, NamesFound>,
) -> &'static [&'static str] {
    match deserialize(NamesProbe) {
        Err(NamesFound(names)) => names,
        Ok(_) => &[],
    }
}

/// A deserializer that only records the variant names it is asked for.
pub struct NamesProbe;

/// What [`NamesProbe`] found (empty when it was not asked for an enum).
#[derive(Debug)]
pub struct NamesFound(&'static [&'static str]);

impl fmt::Display for NamesFound {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "variants {:?}", self.0)
    }
}

impl std::error::Error for NamesFound {}

impl de::Error for NamesFound {
    fn custom<T: fmt::Display>(_: T) -> Self {
        NamesFound(&[])
    }
}

impl<'de> Deserializer<'de> for NamesProbe {
    type Error = NamesFound;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, NamesFound> {
        Err(NamesFound(&[]))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, NamesFound> {
        Err(NamesFound(variants))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// Defines a frame enum: variants in `snake_case` on the wire under `type`, encoded with `type`
/// first, decoded without buffering when `type` comes first (see the module's text). Write the
/// enum as for serde (field attributes such as `default` apply), without deriving
/// `Serialize`/`Deserialize`: the macro does.
macro_rules! frame_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $($body:tt)* }
    ) => {
        $(#[$meta])*
        #[derive(serde::Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        $vis enum $name { $($body)* }

        const _: () = {
            type Remote = $name;

            // The same variants, externally tagged: serde builds `Remote`'s variants from it.
            #[allow(dead_code)]
            #[derive(serde::Deserialize)]
            #[serde(remote = "Remote", rename_all = "snake_case")]
            enum External { $($body)* }

            impl $crate::tagged::Tagged for $name {
                fn types() -> &'static [&'static str] {
                    static TYPES: std::sync::OnceLock<&'static [&'static str]> =
                        std::sync::OnceLock::new();
                    TYPES.get_or_init(|| $crate::tagged::variant_names(External::deserialize))
                }

                fn decode_variant<'de, D: serde::Deserializer<'de>>(
                    variant: D,
                ) -> Result<Self, D::Error> {
                    External::deserialize(variant)
                }
            }

            impl<'de> serde::Deserialize<'de> for $name {
                fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    $crate::tagged::deserialize(deserializer)
                }
            }
        };
    };
}

pub(crate) use frame_enum;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    /// Accepts being decoded only by serde_json's own deserializer reading the input: through
    /// a buffer (serde's or a `Value`) it fails, so a test using it sees how a frame was read.
    #[derive(Debug, Clone, PartialEq, Serialize)]
    struct Direct(u64);

    impl<'de> Deserialize<'de> for Direct {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let name = std::any::type_name::<D>();
            if !name.starts_with("&mut serde_json::de::Deserializer") {
                return Err(de::Error::custom(format!("read through {name}")));
            }
            u64::deserialize(deserializer).map(Direct)
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Body {
        n: Direct,
        #[serde(default)]
        note: Option<String>,
    }

    frame_enum! {
        #[derive(Debug, Clone, PartialEq)]
        enum Probe {
            Wrapped(Body),
            Inline {
                n: Direct,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                note: Option<String>,
            },
            Plain {
                text: String,
            },
        }
    }

    fn decode(text: &str) -> Result<Decoded<Probe>, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn the_types_are_the_variants_wire_names() {
        assert_eq!(Probe::types(), ["wrapped", "inline", "plain"]);
    }

    #[test]
    fn type_first_is_decoded_straight_from_the_input() {
        let text = r#"{"type":"wrapped","n":7,"note":"x"}"#;
        assert_eq!(
            decode(text).unwrap(),
            Decoded::Known(Probe::Wrapped(Body {
                n: Direct(7),
                note: Some("x".into())
            }))
        );
        // From bytes too (the IPC codec's way).
        let bytes = br#"{"type":"inline","n":8}"#;
        assert_eq!(
            serde_json::from_slice::<Probe>(bytes).unwrap(),
            Probe::Inline {
                n: Direct(8),
                note: None
            }
        );
    }

    #[test]
    fn encoding_writes_type_first_and_round_trips() {
        for frame in [
            Probe::Wrapped(Body {
                n: Direct(1),
                note: None,
            }),
            Probe::Inline {
                n: Direct(2),
                note: Some("é\"".into()),
            },
            Probe::Plain { text: "t".into() },
        ] {
            let text = serde_json::to_string(&frame).unwrap();
            assert!(text.starts_with(r#"{"type":""#), "{text}");
            assert_eq!(serde_json::from_str::<Probe>(&text).unwrap(), frame);
        }
    }

    #[test]
    fn type_later_is_still_decoded_holding_only_the_fields_before_it() {
        let text = r#"{"text":"a\nb","type":"plain"}"#;
        assert_eq!(
            decode(text).unwrap(),
            Decoded::Known(Probe::Plain {
                text: "a\nb".into()
            })
        );
        let text = r#"{"note":"x","type":"wrapped","n":3}"#;
        assert_eq!(
            decode(text).unwrap(),
            Decoded::Known(Probe::Wrapped(Body {
                n: Direct(3),
                note: Some("x".into())
            }))
        );
        // A field held before `type` went through a buffer; that is the fallback's cost.
        let err = decode(r#"{"n":3,"type":"wrapped"}"#).unwrap_err();
        assert!(err.to_string().contains("Value"), "{err}");
    }

    #[test]
    fn an_unknown_type_is_skipped_whole() {
        let text = r#"{"type":"later","x":{"deep":[1,2,{"y":null}]},"z":"w"}"#;
        assert_eq!(decode(text).unwrap(), Decoded::Unknown("later".into()));
        let text = r#"{"x":1,"type":"later","z":2}"#;
        assert_eq!(decode(text).unwrap(), Decoded::Unknown("later".into()));
        // The enum itself names the type and the ones it knows.
        let err = serde_json::from_str::<Probe>(r#"{"type":"later"}"#).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("later") && err.contains("plain"), "{err}");
    }

    #[test]
    fn a_malformed_frame_of_a_known_type_names_the_problem() {
        let cases = [
            (r#"{"type":"plain"}"#, "missing field `text`"),
            (r#"{"type":"plain","text":5}"#, "invalid type: integer `5`"),
            (r#"{"text":"a"}"#, "missing field `type`"),
            (r#"{"type":7,"text":"a"}"#, "a string in the field `type`"),
            (r#"[1]"#, "a JSON object with a `type`"),
            (r#"{"type":"plain","text":"a""#, "EOF"),
            (r#"{"type":"plain","text":"a"} x"#, "trailing characters"),
        ];
        for (text, problem) in cases {
            let err = decode(text).unwrap_err().to_string();
            assert!(err.contains(problem), "{text}: {err}");
        }
    }
}
