//! Avro single-object encoding (marker `C3 01`, the writer schema's 64-bit
//! CRC-64-AVRO fingerprint little-endian, then the binary datum) and the
//! registry of every published schema version.
//!
//! Why single-object: any consumer, ours or another team's, can tell from the
//! bytes alone which schema wrote a record, and resolve it against the schema
//! it reads with. Published versions are never removed from `PUBLISHED`, so an
//! old record stays readable after a schema moves on.

mod decode;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The two bytes that open every single-object encoded record.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// Which contract a schema belongs to. Each kind has a sequence of versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    ConversionRaw,
    ConversionEnriched,
    DeliveryStatus,
    DeadLetter,
}

impl SchemaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaKind::ConversionRaw => "conversion_raw",
            SchemaKind::ConversionEnriched => "conversion_enriched",
            SchemaKind::DeliveryStatus => "delivery_status",
            SchemaKind::DeadLetter => "dead_letter",
        }
    }
}

/// A published schema version: (kind, version, schema text). Append only.
pub struct PublishedSchema {
    pub kind: SchemaKind,
    pub version: u32,
    pub file: &'static str,
    pub text: &'static str,
}

/// Every schema version ever published, oldest first per kind. The last
/// version of a kind is the one services write with.
pub const PUBLISHED: &[PublishedSchema] = &[
    PublishedSchema {
        kind: SchemaKind::ConversionRaw,
        version: 1,
        file: "conversion_raw.v1.avsc",
        text: include_str!("../../../../schemas/conversion_raw.v1.avsc"),
    },
    PublishedSchema {
        kind: SchemaKind::ConversionEnriched,
        version: 1,
        file: "conversion_enriched.v1.avsc",
        text: include_str!("../../../../schemas/conversion_enriched.v1.avsc"),
    },
    PublishedSchema {
        kind: SchemaKind::DeliveryStatus,
        version: 1,
        file: "delivery_status.v1.avsc",
        text: include_str!("../../../../schemas/delivery_status.v1.avsc"),
    },
    PublishedSchema {
        kind: SchemaKind::DeliveryStatus,
        version: 2,
        file: "delivery_status.v2.avsc",
        text: include_str!("../../../../schemas/delivery_status.v2.avsc"),
    },
    PublishedSchema {
        kind: SchemaKind::DeadLetter,
        version: 1,
        file: "dead_letter.v1.avsc",
        text: include_str!("../../../../schemas/dead_letter.v1.avsc"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record is not Avro single-object encoded (expected marker C3 01 and a 10-byte header, got {len} bytes)")]
    NotSingleObject { len: usize },
    #[error("unknown writer schema fingerprint {fingerprint:016x}")]
    UnknownSchema { fingerprint: u64 },
    #[error("record was written with a {found} schema, expected {expected}")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("Avro datum does not decode with its writer schema: {0}")]
    Decode(String),
    #[error("Avro datum does not map onto the model: {0}")]
    Model(String),
    #[error("value does not encode with the schema: {0}")]
    Encode(String),
    #[error("schema {file} is invalid: {message}")]
    InvalidSchema { file: &'static str, message: String },
}

impl CodecError {
    /// A stable, low-cardinality code for dead letters and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::NotSingleObject { .. } => "not_single_object",
            CodecError::UnknownSchema { .. } => "unknown_schema",
            CodecError::WrongKind { .. } => "wrong_schema",
            CodecError::Decode(_) => "decode_failed",
            CodecError::Model(_) => "decode_failed",
            CodecError::Encode(_) => "encode_failed",
            CodecError::InvalidSchema { .. } => "invalid_schema",
        }
    }
}

struct RegisteredSchema {
    kind: SchemaKind,
    schema: Arc<Schema>,
    /// No named-type references: the direct decoder can read it.
    self_contained: bool,
}

/// Fingerprint -> writer schema, for every published version, plus the
/// current (newest) version of each kind.
pub struct SchemaRegistry {
    by_fingerprint: HashMap<u64, RegisteredSchema>,
    current: HashMap<SchemaKind, (Arc<Schema>, u64)>,
}

impl SchemaRegistry {
    /// The registry of the schemas compiled into this binary. Parsed once.
    pub fn global() -> &'static SchemaRegistry {
        static REGISTRY: OnceLock<SchemaRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            // The schemas are compiled in and covered by tests, so a failure
            // here is a build defect, not something input can cause.
            SchemaRegistry::from_published(PUBLISHED).expect("published schemas parse")
        })
    }

    pub fn from_published(published: &[PublishedSchema]) -> Result<Self, CodecError> {
        let mut registry = SchemaRegistry {
            by_fingerprint: HashMap::new(),
            current: HashMap::new(),
        };
        for p in published {
            registry.add(p.kind, p.file, p.text)?;
        }
        Ok(registry)
    }

    /// Registers one schema version; the last one added per kind becomes current.
    pub fn add(
        &mut self,
        kind: SchemaKind,
        file: &'static str,
        text: &str,
    ) -> Result<u64, CodecError> {
        let schema = Schema::parse_str(text).map_err(|e| CodecError::InvalidSchema {
            file,
            message: e.to_string(),
        })?;
        let fingerprint =
            fingerprint_of(text).map_err(|message| CodecError::InvalidSchema { file, message })?;
        let schema = Arc::new(schema);
        self.by_fingerprint.insert(
            fingerprint,
            RegisteredSchema {
                kind,
                self_contained: decode::is_self_contained(&schema),
                schema: schema.clone(),
            },
        );
        self.current.insert(kind, (schema, fingerprint));
        Ok(fingerprint)
    }

    /// Registers a schema version this binary can read but does not write
    /// with (e.g. a newer version deployed by another team before this
    /// service is upgraded). The current writer schema stays as it is.
    pub fn add_readable(&mut self, kind: SchemaKind, text: &str) -> Result<u64, CodecError> {
        let schema = Schema::parse_str(text).map_err(|e| CodecError::InvalidSchema {
            file: "<readable>",
            message: e.to_string(),
        })?;
        let fingerprint = fingerprint_of(text).map_err(|message| CodecError::InvalidSchema {
            file: "<readable>",
            message,
        })?;
        self.by_fingerprint.insert(
            fingerprint,
            RegisteredSchema {
                kind,
                self_contained: decode::is_self_contained(&schema),
                schema: Arc::new(schema),
            },
        );
        Ok(fingerprint)
    }

    pub fn current(&self, kind: SchemaKind) -> Option<(&Arc<Schema>, u64)> {
        self.current.get(&kind).map(|(s, f)| (s, *f))
    }

    pub fn writer_schema(&self, fingerprint: u64) -> Option<(SchemaKind, &Arc<Schema>)> {
        self.by_fingerprint
            .get(&fingerprint)
            .map(|r| (r.kind, &r.schema))
    }
}

/// CRC-64-AVRO (Rabin) fingerprint of a schema's Parsing Canonical Form, as
/// the Avro specification defines it for single-object encoding.
pub fn fingerprint_of(schema_json: &str) -> Result<u64, String> {
    Ok(rabin64(parsing_canonical_form(schema_json)?.as_bytes()))
}

/// The schema's Parsing Canonical Form, per the Avro specification.
///
/// Computed here rather than taken from apache-avro, whose canonical form
/// (0.21) keeps `{"type":"long"}` where a logical type was stripped; the
/// specification (and Java, Python, fastavro) says `"long"`, and a
/// fingerprint that differs from every other implementation's would make our
/// records unreadable to other teams' consumers.
pub fn parsing_canonical_form(schema_json: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(schema_json).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = String::with_capacity(schema_json.len());
    pcf(&value, "", &mut out)?;
    Ok(out)
}

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace.unwrap_or(enclosing) {
        "" => name.to_string(),
        ns => format!("{ns}.{name}"),
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn pcf(v: &serde_json::Value, ns: &str, out: &mut String) -> Result<(), String> {
    use serde_json::Value;
    match v {
        Value::String(s) if PRIMITIVES.contains(&s.as_str()) => out.push_str(&json_string(s)),
        Value::String(s) => out.push_str(&json_string(&full_name(s, None, ns))),
        Value::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pcf(b, ns, out)?;
            }
            out.push(']');
        }
        Value::Object(m) => {
            let t = m.get("type").ok_or("a schema object without `type`")?;
            let Value::String(t) = t else {
                return pcf(t, ns, out);
            };
            match t.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    let name = m
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or("a named type without `name`")?;
                    let full = full_name(name, m.get("namespace").and_then(Value::as_str), ns);
                    let inner_ns = full.rsplit_once('.').map(|(n, _)| n).unwrap_or("");
                    out.push_str(&format!(
                        "{{\"name\":{},\"type\":{}",
                        json_string(&full),
                        json_string(t)
                    ));
                    match t.as_str() {
                        "enum" => {
                            let symbols = m.get("symbols").ok_or("enum without symbols")?;
                            out.push_str(&format!(",\"symbols\":{symbols}"));
                        }
                        "fixed" => {
                            let size = m
                                .get("size")
                                .and_then(Value::as_u64)
                                .ok_or("fixed without size")?;
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            out.push_str(",\"fields\":[");
                            let fields = m
                                .get("fields")
                                .and_then(Value::as_array)
                                .ok_or("record without fields")?;
                            for (i, f) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = f
                                    .get("name")
                                    .and_then(Value::as_str)
                                    .ok_or("field without name")?;
                                out.push_str(&format!(
                                    "{{\"name\":{},\"type\":",
                                    json_string(fname)
                                ));
                                pcf(f.get("type").ok_or("field without type")?, inner_ns, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                "array" => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    pcf(m.get("items").ok_or("array without items")?, ns, out)?;
                    out.push('}');
                }
                "map" => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    pcf(m.get("values").ok_or("map without values")?, ns, out)?;
                    out.push('}');
                }
                // A primitive, possibly with a logical type: its simple form.
                other => pcf(&Value::String(other.to_string()), ns, out)?,
            }
        }
        other => return Err(format!("not a schema: {other}")),
    }
    Ok(())
}

fn rabin64(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: OnceLock<[u64; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    let mut fp = EMPTY;
    for &b in bytes {
        fp = (fp >> 8) ^ table[((fp ^ b as u64) & 0xff) as usize];
    }
    fp
}

/// Reads the writer fingerprint from a single-object encoded record.
pub fn peek_fingerprint(bytes: &[u8]) -> Result<u64, CodecError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != SINGLE_OBJECT_MARKER {
        return Err(CodecError::NotSingleObject { len: bytes.len() });
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok(u64::from_le_bytes(fp))
}

/// Encodes and decodes one model type with the current schema of its kind,
/// resolving records written by any published version.
pub struct Codec<T> {
    registry: &'static SchemaRegistry,
    kind: SchemaKind,
    writer: Arc<Schema>,
    fingerprint: u64,
    _model: PhantomData<fn() -> T>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Self {
        Codec {
            registry: self.registry,
            kind: self.kind,
            writer: self.writer.clone(),
            fingerprint: self.fingerprint,
            _model: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Codec<T> {
    pub fn new(kind: SchemaKind) -> Self {
        Self::with_registry(SchemaRegistry::global(), kind)
    }

    /// A codec over another registry (tests use this to stand in a newer or
    /// older version of a schema).
    pub fn with_registry(registry: &'static SchemaRegistry, kind: SchemaKind) -> Self {
        let (writer, fingerprint) = registry
            .current(kind)
            .map(|(s, f)| (s.clone(), f))
            .expect("every SchemaKind has a published schema");
        Codec {
            registry,
            kind,
            writer,
            fingerprint,
            _model: PhantomData,
        }
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&SINGLE_OBJECT_MARKER);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        apache_avro::write_avro_datum_ref(&self.writer, value, &mut out)
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        Ok(out)
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let fingerprint = peek_fingerprint(bytes)?;
        let registered = self
            .registry
            .by_fingerprint
            .get(&fingerprint)
            .ok_or(CodecError::UnknownSchema { fingerprint })?;
        if registered.kind != self.kind {
            return Err(CodecError::WrongKind {
                expected: self.kind.as_str(),
                found: registered.kind.as_str(),
            });
        }
        let body = &bytes[HEADER_LEN..];
        if registered.self_contained {
            let (value, read) = decode::from_slice::<T>(&registered.schema, body)
                .map_err(|e| CodecError::Decode(e.to_string()))?;
            if read != body.len() {
                return Err(CodecError::Decode(format!(
                    "{} trailing bytes after the datum",
                    body.len() - read
                )));
            }
            return Ok(value);
        }
        self.decode_resolving(fingerprint, &registered.schema, body)
    }

    /// The general path through apache-avro's `Value` and schema resolution,
    /// for writer schemas the direct decoder does not handle.
    fn decode_resolving(
        &self,
        fingerprint: u64,
        writer: &Schema,
        body: &[u8],
    ) -> Result<T, CodecError> {
        let mut rest = body;
        let reader = if fingerprint == self.fingerprint {
            None
        } else {
            Some(self.writer.as_ref())
        };
        let value = apache_avro::from_avro_datum(writer, &mut rest, reader)
            .map_err(|e| CodecError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CodecError::Decode(format!(
                "{} trailing bytes after the datum",
                rest.len()
            )));
        }
        apache_avro::from_value(&value).map_err(|e| CodecError::Model(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabin_matches_the_specification_vector() {
        // From the Avro specification test vectors: fingerprint of "null".
        assert_eq!(fingerprint_of(r#""null""#).unwrap(), 0x63dd_24e7_cc25_8f8a);
        assert_eq!(
            fingerprint_of(r#"{"type": "int"}"#).unwrap(),
            0x7275_d51a_3f39_5c8f
        );
    }

    #[test]
    fn canonical_form_follows_the_specification() {
        let schema = r#"{"type": "record", "name": "R", "namespace": "a.b", "doc": "x",
            "fields": [
              {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "d"},
              {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"], "default": "x"}},
              {"name": "r", "type": ["null", "E"], "default": null},
              {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "string"}}}
            ]}"#;
        assert_eq!(
            parsing_canonical_form(schema).unwrap(),
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"t","type":"long"},{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["x","y"]}},{"name":"r","type":["null","a.b.E"]},{"name":"m","type":{"type":"map","values":{"type":"array","items":"string"}}}]}"#
        );
    }

    #[test]
    fn every_published_schema_parses_and_has_a_distinct_fingerprint() {
        let registry = SchemaRegistry::from_published(PUBLISHED).unwrap();
        assert_eq!(registry.by_fingerprint.len(), PUBLISHED.len());
        // ...and is read by the direct decoder, not the slow path.
        assert!(registry.by_fingerprint.values().all(|r| r.self_contained));
    }

    /// The direct decoder and apache-avro's resolving path agree.
    #[test]
    fn both_decode_paths_agree() {
        use crate::model::*;
        let codec: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
        let letter = DeadLetter {
            stage: "enricher".into(),
            reason: "decode_failed".into(),
            detail: "x".into(),
            errors: vec![FieldError::new("a.b", "c"), FieldError::new("d", "é")],
            tenant: None,
            source_topic: Some("t".into()),
            source_partition: Some(-1),
            source_offset: Some(i64::MAX),
            original_key: None,
            original_value: Some(vec![0, 255, 7]),
            time: -5,
        };
        let bytes = codec.encode(&letter).unwrap();
        let fast = codec.decode(&bytes).unwrap();
        let writer = SchemaRegistry::global()
            .writer_schema(codec.fingerprint())
            .unwrap()
            .1
            .clone();
        let slow = codec
            .decode_resolving(codec.fingerprint(), &writer, &bytes[HEADER_LEN..])
            .unwrap();
        assert_eq!(fast, letter);
        assert_eq!(slow, letter);
        // A corrupt array count is an error, not a spin.
        let mut corrupt = bytes[..HEADER_LEN].to_vec();
        corrupt.extend_from_slice(&[2, b'x', 2, b'y', 2, b'z']); // stage, reason, detail
        corrupt.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]); // errors: ~2^62 items
        assert!(codec.decode(&corrupt).is_err());
        // Every truncation is an error, never a panic.
        for cut in HEADER_LEN..bytes.len() {
            assert!(codec.decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_a_typed_error_not_a_panic() {
        let codec: Codec<crate::model::DeadLetter> = Codec::new(SchemaKind::DeadLetter);
        assert!(matches!(
            codec.decode(b"{}"),
            Err(CodecError::NotSingleObject { .. })
        ));
        let mut unknown = SINGLE_OBJECT_MARKER.to_vec();
        unknown.extend_from_slice(&42u64.to_le_bytes());
        assert!(matches!(
            codec.decode(&unknown),
            Err(CodecError::UnknownSchema { fingerprint: 42 })
        ));
        let mut truncated = SINGLE_OBJECT_MARKER.to_vec();
        truncated.extend_from_slice(&codec.fingerprint().to_le_bytes());
        truncated.extend_from_slice(&[0x02]);
        assert!(matches!(
            codec.decode(&truncated),
            Err(CodecError::Decode(_))
        ));
    }
}
