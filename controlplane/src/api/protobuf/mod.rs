//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) to Kubernetes JSON.
//!
//! kubectl 1.32 and later sends typed creates (`kubectl create namespace|deployment|configmap|
//! secret ...`) as protobuf. The store keeps JSON, so [`decode`] turns such a body into the JSON
//! object a JSON client would have sent.
//!
//! Wire format: the magic `k8s\0`, then a `runtime.Unknown` message {1 typeMeta {1 apiVersion,
//! 2 kind}, 2 raw, 3 contentEncoding, 4 contentType} whose `raw` is the object's own message.
//! That message is decoded generically, guided by the table in `schema`, which
//! `cargo xtask gen-protobuf` generates from k8s-pb (wire layout) and k8s-openapi (JSON names).
//!
//! JSON fidelity: Go's protobuf marshaller writes non-pointer fields even when they are zero,
//! while Go's JSON omits them (`omitempty`). So zero scalars are dropped unless the table marks
//! the field `keep_zero`: pointer fields, where a zero was set on purpose, and required fields,
//! which Go's JSON always writes. Empty repeated fields and maps are omitted; empty nested
//! messages stay `{}`, as Go writes non-pointer structs. Well-known types get their JSON forms:
//! Time and MicroTime become RFC 3339 strings (a zero time is omitted, Go writes null),
//! IntOrString a number or string, Quantity its string, Duration Go's `1h0m0s`, RawExtension
//! and FieldsV1 the JSON they carry, and bytes base64.
//!
//! The body is untrusted: nothing here panics, nesting is capped at [`MAX_DEPTH`], and nothing
//! is allocated from a length read off the wire, so memory grows only with bytes actually read.

#[rustfmt::skip]
mod schema;

use std::fmt;

use base64::Engine as _;
use serde_json::{Map, Value};

/// Message nesting limit. Kubernetes objects nest far less deeply, and the cap bounds the
/// decoder's recursion whatever the table holds.
pub const MAX_DEPTH: usize = 100;

/// Prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";
/// The only payload content type decoded here.
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

// Names of the messages handled without the table, for error messages.
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";
const TYPE_META: &str = "k8s.io.apimachinery.pkg.runtime.TypeMeta";
const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";

/// What a field holds on the wire and which JSON it becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "the decoder supports types the generated table may not currently use"
)]
pub enum Type {
    Bool,
    Int32,
    Int64,
    Double,
    String,
    /// Base64 in JSON, like Go's `[]byte`.
    Bytes,
    /// A message: index into `schema::MESSAGES`.
    Msg(u16),
    Time,
    MicroTime,
    Duration,
    IntOrString,
    Quantity,
    RawExtension,
    FieldsV1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    One,
    Repeated,
    /// `map<string, V>`: repeated entry messages {1 key, 2 value}, V being the field's type.
    Map,
    /// A Go struct embedded with `json:",inline"`: nested on the wire, flattened in JSON.
    Inline,
}

pub struct Field {
    pub tag: u32,
    /// JSON property name.
    pub name: &'static str,
    pub ty: Type,
    pub label: Label,
    /// Keep a zero value (0, false, "", IntOrString 0) instead of omitting it.
    pub keep_zero: bool,
}

pub struct Message {
    /// Full proto name, e.g. `k8s.io.api.core.v1.PodSpec`.
    pub name: &'static str,
    /// Sorted by tag.
    pub fields: &'static [Field],
}

/// A kind accepted at the top level.
pub struct Root {
    /// Empty: any apiVersion.
    pub api_version: &'static str,
    pub kind: &'static str,
    pub message: u16,
}

/// A field in the input, for error messages: "field 3 (hostPort) in k8s.io.api.core.v1.ContainerPort".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldRef {
    pub message: &'static str,
    pub tag: u32,
    /// JSON name, when the field is known.
    pub name: Option<&'static str>,
}

impl fmt::Display for FieldRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "field {} ({name}) in {}", self.tag, self.message),
            None => write!(f, "field {} in {}", self.tag, self.message),
        }
    }
}

/// Why a protobuf body could not be turned into JSON; the messages are meant for the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    #[error("protobuf body does not start with the k8s magic (\"k8s\\0\")")]
    NoMagic,
    #[error("protobuf body has no kind in its typeMeta")]
    NoKind,
    #[error(
        "unknown kind {api_version} {kind}: this server decodes protobuf only for built-in \
         kinds it knows; send JSON instead"
    )]
    UnknownKind { api_version: String, kind: String },
    #[error("protobuf body has content encoding {0:?}; only unencoded bodies are supported")]
    ContentEncoding(String),
    #[error("protobuf body wraps content type {found:?}; only {expected} is supported")]
    ContentType {
        found: String,
        expected: &'static str,
    },
    #[error("truncated field key in {0}")]
    TruncatedKey(&'static str),
    #[error("invalid field number {number} in {message}")]
    FieldNumber { number: u64, message: &'static str },
    #[error("truncated {0}")]
    Truncated(FieldRef),
    #[error("{at} has wire type {wire}, which does not fit its type")]
    WireType { at: FieldRef, wire: u8 },
    #[error("{0} is not valid UTF-8")]
    Utf8(FieldRef),
    #[error("invalid {at}: {reason}")]
    Invalid { at: FieldRef, reason: String },
    #[error("protobuf nesting deeper than {max} levels in {message}")]
    TooDeep { message: &'static str, max: usize },
    #[error("internal error: the protobuf schema has no message #{0}")]
    Schema(u16),
}

/// Decodes a Kubernetes protobuf body into the Kubernetes JSON object, `apiVersion` and `kind`
/// included.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let unknown = Unknown::parse(envelope)?;
    if !unknown.content_encoding.is_empty() {
        return Err(ProtobufError::ContentEncoding(
            unknown.content_encoding.to_string(),
        ));
    }
    // Go's serializer leaves contentType empty; anything else is not protobuf we can read.
    if !unknown.content_type.is_empty() && unknown.content_type != PROTOBUF {
        return Err(ProtobufError::ContentType {
            found: unknown.content_type.to_string(),
            expected: PROTOBUF,
        });
    }
    if unknown.kind.is_empty() {
        return Err(ProtobufError::NoKind);
    }
    let (api_version, kind) = (unknown.api_version, unknown.kind);
    let root = schema::ROOTS
        .iter()
        .find(|r| r.kind == kind && r.api_version == api_version)
        .or_else(|| {
            schema::ROOTS
                .iter()
                .find(|r| r.kind == kind && r.api_version.is_empty())
        })
        .ok_or_else(|| ProtobufError::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        })?;
    let mut object = Map::new();
    if !api_version.is_empty() {
        object.insert("apiVersion".into(), api_version.into());
    }
    object.insert("kind".into(), kind.into());
    decode_into(unknown.raw, message(root.message)?, 1, &mut object)?;
    Ok(Value::Object(object))
}

/// The `runtime.Unknown` envelope.
#[derive(Default)]
struct Unknown<'a> {
    api_version: &'a str,
    kind: &'a str,
    raw: &'a [u8],
    content_encoding: &'a str,
    content_type: &'a str,
}

impl<'a> Unknown<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, ProtobufError> {
        let mut out = Self::default();
        for_each_field(buf, UNKNOWN, |tag, wire, buf| {
            let at = FieldRef {
                message: UNKNOWN,
                tag,
                name: None,
            };
            match tag {
                1 => {
                    let type_meta = len_field(buf, wire, at)?;
                    for_each_field(type_meta, TYPE_META, |tag, wire, buf| {
                        let at = FieldRef {
                            message: TYPE_META,
                            tag,
                            name: None,
                        };
                        match tag {
                            1 => out.api_version = utf8(len_field(buf, wire, at)?, at)?,
                            2 => out.kind = utf8(len_field(buf, wire, at)?, at)?,
                            _ => skip(buf, wire, at)?,
                        }
                        Ok(())
                    })?;
                }
                2 => out.raw = len_field(buf, wire, at)?,
                3 => out.content_encoding = utf8(len_field(buf, wire, at)?, at)?,
                4 => out.content_type = utf8(len_field(buf, wire, at)?, at)?,
                _ => skip(buf, wire, at)?,
            }
            Ok(())
        })?;
        Ok(out)
    }
}

fn message(index: u16) -> Result<&'static Message, ProtobufError> {
    schema::MESSAGES
        .get(usize::from(index))
        .ok_or(ProtobufError::Schema(index))
}

/// Decodes the fields of `message` from `buf` into `out`. Decoding into an existing object is
/// what protobuf specifies for a singular message field that occurs twice: the occurrences merge.
fn decode_into(
    buf: &[u8],
    message: &'static Message,
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<(), ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep {
            message: message.name,
            max: MAX_DEPTH,
        });
    }
    for_each_field(buf, message.name, |tag, wire, buf| {
        let field = message
            .fields
            .binary_search_by_key(&tag, |f| f.tag)
            .ok()
            .and_then(|i| message.fields.get(i));
        let at = FieldRef {
            message: message.name,
            tag,
            name: field.map(|f| f.name),
        };
        match field {
            Some(field) => decode_field(buf, wire, field, at, depth, out),
            // Fields newer than the table, or from another version: ignored, as Go does.
            None => skip(buf, wire, at),
        }
    })
}

fn decode_field(
    buf: &mut &[u8],
    wire: u8,
    field: &'static Field,
    at: FieldRef,
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<(), ProtobufError> {
    match (field.label, field.ty) {
        (Label::Inline, Type::Msg(index)) => {
            let payload = len_field(buf, wire, at)?;
            decode_into(payload, message(index)?, depth + 1, out)
        }
        // The generator marks only message fields inline.
        (Label::Inline, _) => Err(ProtobufError::WireType { at, wire }),
        (Label::One, Type::Msg(index)) => {
            let payload = len_field(buf, wire, at)?;
            let slot = out
                .entry(field.name)
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            match slot {
                Value::Object(map) => decode_into(payload, message(index)?, depth + 1, map),
                _ => Ok(()),
            }
        }
        (Label::One, ty) => {
            match decode_value(buf, wire, ty, at, depth)? {
                Some(value) if field.keep_zero || !is_zero(ty, &value) => {
                    out.insert(field.name.to_string(), value);
                }
                // Last occurrence wins, so a zero after a non-zero value clears it.
                _ => {
                    out.remove(field.name);
                }
            }
            Ok(())
        }
        (Label::Repeated, ty) => {
            let mut items = Vec::new();
            match scalar_wire(ty) {
                // Packed: one length-delimited run of elements.
                Some(_) if wire == 2 => {
                    let mut payload = len_field(buf, wire, at)?;
                    while !payload.is_empty() {
                        items.push(scalar(&mut payload, ty, at)?);
                    }
                }
                // Zero time elements stay null, as Go writes them.
                _ => items.push(decode_value(buf, wire, ty, at, depth)?.unwrap_or(Value::Null)),
            }
            if !items.is_empty() {
                let slot = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(array) = slot {
                    array.extend(items);
                } else {
                    *slot = Value::Array(items);
                }
            }
            Ok(())
        }
        (Label::Map, ty) => {
            let payload = len_field(buf, wire, at)?;
            let (key, value) = map_entry(payload, ty, at, depth + 1)?;
            let slot = out
                .entry(field.name)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = slot {
                map.insert(key, value);
            } else {
                *slot = Value::Object(Map::from_iter([(key, value)]));
            }
            Ok(())
        }
    }
}

/// One map entry {1 key, 2 value}; a missing key or value is its type's zero, and map values
/// are kept even when zero (an empty label value is a real value).
fn map_entry(
    buf: &[u8],
    ty: Type,
    at: FieldRef,
    depth: usize,
) -> Result<(String, Value), ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep {
            message: at.message,
            max: MAX_DEPTH,
        });
    }
    let mut key = "";
    let mut value = None;
    for_each_field(buf, at.message, |tag, wire, buf| {
        match tag {
            1 => key = utf8(len_field(buf, wire, at)?, at)?,
            2 => value = Some(decode_value(buf, wire, ty, at, depth)?.unwrap_or(Value::Null)),
            _ => skip(buf, wire, at)?,
        }
        Ok(())
    })?;
    let value = match (value, ty) {
        (Some(value), _) => value,
        (None, Type::Bool) => Value::Bool(false),
        (None, Type::Int32 | Type::Int64) => Value::from(0),
        (None, Type::Double) => Value::from(0.0),
        (None, _) => len_value(&[], ty, at, depth)?.unwrap_or(Value::Null),
    };
    Ok((key.to_string(), value))
}

/// Decodes one value of `ty` whose key announced wire type `wire`. `None` is a value Go writes
/// as JSON null: a zero Time or MicroTime, an empty RawExtension or FieldsV1.
fn decode_value(
    buf: &mut &[u8],
    wire: u8,
    ty: Type,
    at: FieldRef,
    depth: usize,
) -> Result<Option<Value>, ProtobufError> {
    match scalar_wire(ty) {
        Some(expected) if wire == expected => scalar(buf, ty, at).map(Some),
        Some(_) => Err(ProtobufError::WireType { at, wire }),
        None => len_value(len_field(buf, wire, at)?, ty, at, depth),
    }
}

/// The wire type of scalar types (those that can be packed), `None` for length-delimited ones.
fn scalar_wire(ty: Type) -> Option<u8> {
    match ty {
        Type::Bool | Type::Int32 | Type::Int64 => Some(0),
        Type::Double => Some(1),
        _ => None,
    }
}

/// Reads one varint or fixed64 scalar.
fn scalar(buf: &mut &[u8], ty: Type, at: FieldRef) -> Result<Value, ProtobufError> {
    match ty {
        Type::Double => {
            let (bytes, rest) = buf
                .split_first_chunk::<8>()
                .ok_or(ProtobufError::Truncated(at))?;
            *buf = rest;
            let number = f64::from_le_bytes(*bytes);
            // Go's JSON refuses NaN and infinities too.
            serde_json::Number::from_f64(number)
                .map(Value::Number)
                .ok_or_else(|| ProtobufError::Invalid {
                    at,
                    reason: format!("{number} is not a finite number"),
                })
        }
        _ => {
            let raw = varint(buf).map_err(|e| e.at(at))?;
            Ok(match ty {
                Type::Bool => Value::Bool(raw != 0),
                // int32 is the low 32 bits: negative values arrive sign-extended to 10 bytes.
                Type::Int32 => Value::from(raw as i32),
                _ => Value::from(raw as i64),
            })
        }
    }
}

/// Decodes a length-delimited value.
fn len_value(
    payload: &[u8],
    ty: Type,
    at: FieldRef,
    depth: usize,
) -> Result<Option<Value>, ProtobufError> {
    Ok(match ty {
        Type::String => Some(Value::String(utf8(payload, at)?.to_string())),
        Type::Bytes => Some(Value::String(
            base64::engine::general_purpose::STANDARD.encode(payload),
        )),
        Type::Msg(index) => {
            let mut map = Map::new();
            decode_into(payload, message(index)?, depth + 1, &mut map)?;
            Some(Value::Object(map))
        }
        Type::Time => time(payload, TIME)?,
        Type::MicroTime => time(payload, MICRO_TIME)?,
        Type::Duration => Some(Value::String(go_duration(
            varint_of(payload, DURATION, 1)? as i64
        ))),
        Type::IntOrString => Some(int_or_string(payload)?),
        Type::Quantity => {
            let text = bytes_of(payload, QUANTITY, 1)?.unwrap_or_default();
            let text = utf8(text, special_at(QUANTITY, 1))?;
            // Go reads a missing quantity as zero, which it writes as "0".
            Some(Value::String(
                if text.is_empty() { "0" } else { text }.to_string(),
            ))
        }
        Type::RawExtension => embedded_json(payload, RAW_EXTENSION)?,
        Type::FieldsV1 => embedded_json(payload, FIELDS_V1)?,
        Type::Bool | Type::Int32 | Type::Int64 | Type::Double => {
            return Err(ProtobufError::WireType { at, wire: 2 });
        }
    })
}

/// Zero values Go's JSON omits from non-pointer `omitempty` fields.
fn is_zero(ty: Type, value: &Value) -> bool {
    let zeroable = matches!(
        ty,
        Type::Bool
            | Type::Int32
            | Type::Int64
            | Type::Double
            | Type::String
            | Type::Bytes
            | Type::IntOrString
    );
    zeroable
        && match value {
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_i64() == Some(0) || n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            _ => false,
        }
}

// ---------------------------------------------------------------------------------------------
// Well-known types

fn special_at(message: &'static str, tag: u32) -> FieldRef {
    FieldRef {
        message,
        tag,
        name: None,
    }
}

/// The last varint in field `tag` of a small message, 0 when absent.
fn varint_of(buf: &[u8], message: &'static str, tag: u32) -> Result<u64, ProtobufError> {
    let mut out = 0;
    for_each_field(buf, message, |t, wire, buf| {
        let at = special_at(message, t);
        if t == tag {
            out = match wire {
                0 => varint(buf).map_err(|e| e.at(at))?,
                _ => return Err(ProtobufError::WireType { at, wire }),
            };
            Ok(())
        } else {
            skip(buf, wire, at)
        }
    })?;
    Ok(out)
}

/// The last length-delimited value in field `tag` of a small message.
fn bytes_of<'a>(
    buf: &'a [u8],
    message: &'static str,
    tag: u32,
) -> Result<Option<&'a [u8]>, ProtobufError> {
    let mut out = None;
    for_each_field(buf, message, |t, wire, buf| {
        let at = special_at(message, t);
        if t == tag {
            out = Some(len_field(buf, wire, at)?);
            Ok(())
        } else {
            skip(buf, wire, at)
        }
    })?;
    Ok(out)
}

/// Seconds of Go's zero `time.Time` (0001-01-01T00:00:00Z), which Go writes as JSON null.
const GO_ZERO_SECONDS: i64 = -62_135_596_800;
/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the years an RFC 3339 timestamp can hold.
const MIN_SECONDS: i64 = -62_167_219_200;
const MAX_SECONDS: i64 = 253_402_300_799;

/// meta/v1 Time {1 seconds, 2 nanos} or MicroTime: RFC 3339 in UTC, to the second for Time
/// (Go drops Time's nanos) and to the microsecond for MicroTime. `None` for Go's zero time,
/// which Go marshals as an empty message.
fn time(payload: &[u8], name: &'static str) -> Result<Option<Value>, ProtobufError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let seconds = varint_of(payload, name, 1)? as i64;
    let micro = name == MICRO_TIME;
    let nanos = if micro {
        i64::from(varint_of(payload, name, 2)? as i32)
    } else {
        0
    };
    // Like Go's time.Unix, nanos outside [0, 1e9) carry into the seconds.
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let seconds = i64::try_from(total.div_euclid(1_000_000_000)).unwrap_or(i64::MAX);
    let nanos = total.rem_euclid(1_000_000_000);
    if seconds == GO_ZERO_SECONDS && nanos == 0 {
        return Ok(None);
    }
    let Some(date) = format_utc(seconds) else {
        return Err(ProtobufError::Invalid {
            at: special_at(name, 1),
            reason: format!("{seconds} seconds is outside the years 0 to 9999"),
        });
    };
    Ok(Some(Value::String(if micro {
        format!("{date}.{:06}Z", nanos / 1000)
    } else {
        format!("{date}Z")
    })))
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the Unix epoch, `None` outside years 0..=9999.
fn format_utc(seconds: i64) -> Option<String> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return None;
    }
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), on 400-year eras
    // starting 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    ))
}

/// Go's `time.Duration.String()`: `1h0m0s`, `1.5s`, `300ms`, `2µs`, `0s`.
fn go_duration(nanos: i64) -> String {
    /// The digits of `v`'s last `precision` decimals without trailing zeros (with a leading
    /// dot, or empty when they are all zero), and `v` without them.
    fn fraction(v: u64, precision: u32) -> (String, u64) {
        let divisor = 10u64.pow(precision);
        let (whole, part) = (v / divisor, v % divisor);
        if part == 0 {
            return (String::new(), whole);
        }
        let digits = format!("{part:0width$}", width = precision as usize);
        (format!(".{}", digits.trim_end_matches('0')), whole)
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    if u == 0 {
        return "0s".to_string();
    }
    if u < 1_000_000_000 {
        let (unit, precision) = if u < 1_000 {
            ("ns", 0)
        } else if u < 1_000_000 {
            ("µs", 3)
        } else {
            ("ms", 6)
        };
        let (frac, whole) = fraction(u, precision);
        return format!("{sign}{whole}{frac}{unit}");
    }
    let (frac, seconds) = fraction(u, 9);
    let (minutes, hours) = (seconds / 60 % 60, seconds / 3600);
    let seconds = seconds % 60;
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}{frac}s"),
        (0, _) => format!("{sign}{minutes}m{seconds}{frac}s"),
        _ => format!("{sign}{hours}h{minutes}m{seconds}{frac}s"),
    }
}

/// util/intstr IntOrString {1 type (0 int, 1 string), 2 intVal, 3 strVal}.
fn int_or_string(payload: &[u8]) -> Result<Value, ProtobufError> {
    match varint_of(payload, INT_OR_STRING, 1)? as i64 {
        0 => Ok(Value::from(varint_of(payload, INT_OR_STRING, 2)? as i32)),
        1 => {
            let text = bytes_of(payload, INT_OR_STRING, 3)?.unwrap_or_default();
            Ok(Value::String(
                utf8(text, special_at(INT_OR_STRING, 3))?.to_string(),
            ))
        }
        other => Err(ProtobufError::Invalid {
            at: special_at(INT_OR_STRING, 1),
            reason: format!("type {other} is neither 0 (int) nor 1 (string)"),
        }),
    }
}

/// RawExtension or FieldsV1 {1 raw}: the JSON document they carry. `None` when empty, which Go
/// writes as null.
fn embedded_json(payload: &[u8], name: &'static str) -> Result<Option<Value>, ProtobufError> {
    let raw = bytes_of(payload, name, 1)?.unwrap_or_default();
    if raw.is_empty() {
        return Ok(None);
    }
    // serde_json caps its own recursion, so hostile JSON cannot blow the stack either.
    serde_json::from_slice(raw)
        .map(Some)
        .map_err(|e| ProtobufError::Invalid {
            at: special_at(name, 1),
            reason: format!("embedded JSON: {e}"),
        })
}

// ---------------------------------------------------------------------------------------------
// Wire primitives

/// A low-level read failure, given its field by [`WireError::at`].
#[derive(Clone, Copy, Debug)]
enum WireError {
    Truncated,
    LongVarint,
}

impl WireError {
    fn at(self, at: FieldRef) -> ProtobufError {
        match self {
            Self::Truncated => ProtobufError::Truncated(at),
            Self::LongVarint => ProtobufError::Invalid {
                at,
                reason: "varint longer than 10 bytes".into(),
            },
        }
    }
}

fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(WireError::Truncated)?;
        *buf = rest;
        // Bits past 64 (only a 10th byte has any) are dropped, as Go's decoder does.
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::LongVarint)
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], WireError> {
    let (head, rest) = buf.split_at_checked(len).ok_or(WireError::Truncated)?;
    *buf = rest;
    Ok(head)
}

/// A length-delimited field's payload, after checking the key's wire type.
fn len_field<'a>(buf: &mut &'a [u8], wire: u8, at: FieldRef) -> Result<&'a [u8], ProtobufError> {
    if wire != 2 {
        return Err(ProtobufError::WireType { at, wire });
    }
    let len = varint(buf).map_err(|e| e.at(at))?;
    // A length beyond the buffer is truncation; it is never used to allocate.
    let len = usize::try_from(len).map_err(|_| ProtobufError::Truncated(at))?;
    take(buf, len).map_err(|e| e.at(at))
}

fn utf8(bytes: &[u8], at: FieldRef) -> Result<&str, ProtobufError> {
    std::str::from_utf8(bytes).map_err(|_| ProtobufError::Utf8(at))
}

/// Skips a field's value.
fn skip(buf: &mut &[u8], wire: u8, at: FieldRef) -> Result<(), ProtobufError> {
    match wire {
        0 => varint(buf).map(drop).map_err(|e| e.at(at)),
        1 => take(buf, 8).map(drop).map_err(|e| e.at(at)),
        2 => len_field(buf, wire, at).map(drop),
        5 => take(buf, 4).map(drop).map_err(|e| e.at(at)),
        // 3 and 4 are proto2 groups, which Kubernetes never sends; 6 and 7 do not exist.
        _ => Err(ProtobufError::WireType { at, wire }),
    }
}

/// Calls `f(tag, wire type, rest)` for each field of a message; `f` consumes the value.
fn for_each_field<'a>(
    mut buf: &'a [u8],
    message: &'static str,
    mut f: impl FnMut(u32, u8, &mut &'a [u8]) -> Result<(), ProtobufError>,
) -> Result<(), ProtobufError> {
    while !buf.is_empty() {
        let key = varint(&mut buf).map_err(|_| ProtobufError::TruncatedKey(message))?;
        // Field numbers run from 1 to 2^29 - 1.
        let tag = u32::try_from(key >> 3)
            .ok()
            .filter(|tag| (1..1 << 29).contains(tag))
            .ok_or(ProtobufError::FieldNumber {
                number: key >> 3,
                message,
            })?;
        f(tag, (key & 7) as u8, &mut buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::autoscaling::v1 as autoscaling;
    use k8s_pb::api::coordination::v1 as coordination;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::api::discovery::v1 as discovery;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime;
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;
    use prost::Message as _;
    use serde_json::json;

    use super::*;

    fn s(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = runtime::Unknown {
            type_meta: Some(runtime::TypeMeta {
                api_version: s(api_version),
                kind: s(kind),
            }),
            raw: Some(raw),
            content_encoding: s(""),
            content_type: s(""),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    fn body(api_version: &str, kind: &str, object: &impl prost::Message) -> Vec<u8> {
        envelope(api_version, kind, object.encode_to_vec())
    }

    /// Metadata as Go's marshaller sends it: the zero creationTimestamp is an empty message.
    fn object_meta(name: &str) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: s(name),
            namespace: s(""),
            generation: Some(0),
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }
    }

    fn int(value: i32) -> Option<IntOrString> {
        Some(IntOrString {
            r#type: Some(0),
            int_val: Some(value),
            str_val: s(""),
        })
    }

    fn string(value: &str) -> Option<IntOrString> {
        Some(IntOrString {
            r#type: Some(1),
            int_val: Some(0),
            str_val: s(value),
        })
    }

    /// The JSON survives a trip through the k8s-openapi type unchanged, so every property name
    /// is one k8s-openapi knows and every value has the shape it expects.
    fn assert_typed<T: serde::de::DeserializeOwned + serde::Serialize>(json: &Value) {
        let typed: T = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), *json);
    }

    // Hand-written protobuf, for what prost would not produce.
    fn key(tag: u32, wire: u8) -> Vec<u8> {
        encode_varint(u64::from(tag) << 3 | u64::from(wire))
    }

    fn encode_varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn len_delimited(tag: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = key(tag, 2);
        out.extend(encode_varint(payload.len() as u64));
        out.extend(payload);
        out
    }

    // Bodies kubectl 1.32.4 sent for `kubectl create namespace demo`, `kubectl create deployment
    // web --image=nginx --replicas=0 --port=80` and `kubectl create service clusterip svc
    // --tcp=80:8080 --tcp=443:https`, captured from the wire.
    const KUBECTL_NAMESPACE: &[u8] =
        b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x1c\x0a\x14\x0a\x04demo\x12\x00\
          \x1a\x00\x22\x00\x2a\x002\x008\x00B\x00\x12\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00";

    const KUBECTL_DEPLOYMENT: &[u8] =
        b"k8s\x00\x0a\x15\x0a\x07apps/v1\x12\x0aDeployment\x12\xb8\x01\x0a\x1f\x0a\x03web\
          \x12\x00\x1a\x00\x22\x00\x2a\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12\
          \x86\x01\x08\x00\x12\x0c\x0a\x0a\x0a\x03app\x12\x03web\x1al\x0a\x1c\x0a\x00\x12\
          \x00\x1a\x00\x22\x00\x2a\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03web\x12L\x12.\
          \x0a\x05nginx\x12\x05nginx\x2a\x002\x0a\x0a\x00\x10\x00\x18P\x22\x00\x2a\x00B\
          \x00j\x00r\x00\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x002\x00B\x00\
          J\x00R\x00X\x00\x60\x00h\x00\x82\x01\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00\x22\
          \x02\x0a\x00\x28\x008\x00\x1a\x0c\x08\x00\x10\x00\x18\x00\x20\x00\x28\x008\x00\
          \x1a\x00\x22\x00";

    const KUBECTL_SERVICE: &[u8] =
        b"k8s\x00\x0a\x0d\x0a\x02v1\x12\x07Service\x12\x8d\x01\x0a\x1f\x0a\x03svc\x12\x00\
          \x1a\x00\x22\x00\x2a\x002\x008\x00B\x00Z\x0a\x0a\x03app\x12\x03svc\x12f\x0a\x1b\
          \x0a\x0780-8080\x12\x03TCP\x18P\x22\x07\x08\x00\x10\x90\x3f\x1a\x00\x28\x00\x0a\
          \x22\x0a\x09443-https\x12\x03TCP\x18\xbb\x03\x22\x0b\x08\x01\x10\x00\x1a\x05http\
          s\x28\x00\x12\x0a\x0a\x03app\x12\x03svc\x1a\x00\x22\x09ClusterIP:\x00B\x00R\x00Z\
          \x00\x60\x00h\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00";

    #[test]
    fn bodies_captured_from_kubectl_decode_to_the_json_kubectl_prints() {
        let cases = [
            (
                KUBECTL_NAMESPACE,
                json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "demo"}, "spec": {}, "status": {},
                }),
            ),
            (
                KUBECTL_DEPLOYMENT,
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "labels": {"app": "web"}},
                    "spec": {
                        "replicas": 0,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{
                                "name": "nginx", "image": "nginx",
                                "ports": [{"containerPort": 80}], "resources": {},
                            }]},
                        },
                        "strategy": {},
                    },
                    "status": {},
                }),
            ),
            (
                KUBECTL_SERVICE,
                json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "svc", "labels": {"app": "svc"}},
                    "spec": {
                        "ports": [
                            {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
                            {"name": "443-https", "protocol": "TCP", "port": 443, "targetPort": "https"},
                        ],
                        "selector": {"app": "svc"},
                        "type": "ClusterIP",
                    },
                    "status": {"loadBalancer": {}},
                }),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(decode(body).unwrap(), expected);
        }
    }

    #[test]
    fn a_namespace_decodes_to_the_json_a_json_client_sends() {
        let mut namespace = core::Namespace {
            metadata: Some(object_meta("demo")),
            spec: Some(core::NamespaceSpec::default()),
            status: Some(core::NamespaceStatus::default()),
        };
        let labels = &mut namespace.metadata.as_mut().unwrap().labels;
        labels.insert("team".into(), "a".into());
        labels.insert("empty".into(), String::new());
        let json = decode(&body("v1", "Namespace", &namespace)).unwrap();
        let expected = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "demo", "labels": {"team": "a", "empty": ""}},
            "spec": {},
            "status": {},
        });
        assert_eq!(json, expected);
        assert_typed::<k8s_openapi::api::core::v1::Namespace>(&json);
    }

    #[test]
    fn a_deployment_keeps_pointer_zeros_and_drops_omitempty_zeros() {
        let mut limits = std::collections::BTreeMap::new();
        limits.insert(
            "cpu".to_string(),
            Quantity {
                string: Some("1".into()),
            },
        );
        limits.insert("memory".to_string(), Quantity { string: None });
        let container = core::Container {
            name: s("web"),
            image: s("nginx:1.27"),
            ports: vec![core::ContainerPort {
                container_port: Some(80),
                host_port: Some(0),
                protocol: s("TCP"),
                host_ip: s(""),
                name: s(""),
            }],
            env: vec![
                core::EnvVar {
                    name: s("A"),
                    value: s("1"),
                    ..Default::default()
                },
                core::EnvVar {
                    name: s("EMPTY"),
                    value: s(""),
                    ..Default::default()
                },
            ],
            resources: Some(core::ResourceRequirements {
                limits,
                ..Default::default()
            }),
            stdin: Some(false),
            security_context: Some(core::SecurityContext {
                run_as_user: Some(0),
                privileged: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut match_labels = std::collections::BTreeMap::new();
        match_labels.insert("app".to_string(), "web".to_string());
        let deployment = apps::Deployment {
            metadata: Some(object_meta("web")),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: match_labels.clone(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels: match_labels,
                        creation_timestamp: Some(meta::Time::default()),
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![container],
                        termination_grace_period_seconds: Some(30),
                        priority: Some(-10),
                        host_network: Some(false),
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: s("RollingUpdate"),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: int(0),
                        max_surge: string("25%"),
                    }),
                }),
                min_ready_seconds: Some(0),
                revision_history_limit: Some(10),
                paused: Some(false),
                progress_deadline_seconds: Some(600),
            }),
            status: Some(apps::DeploymentStatus::default()),
        };
        let json = decode(&body("apps/v1", "Deployment", &deployment)).unwrap();
        let expected = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "web",
                            "image": "nginx:1.27",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "env": [{"name": "A", "value": "1"}, {"name": "EMPTY"}],
                            "resources": {"limits": {"cpu": "1", "memory": "0"}},
                            "securityContext": {"runAsUser": 0, "privileged": false},
                        }],
                        "terminationGracePeriodSeconds": 30,
                        "priority": -10,
                    },
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
                },
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            },
            "status": {},
        });
        assert_eq!(json, expected);
        assert_typed::<k8s_openapi::api::apps::v1::Deployment>(&json);
    }

    #[test]
    fn a_secret_encodes_binary_data_as_base64() {
        let mut secret = core::Secret {
            metadata: Some(object_meta("creds")),
            r#type: s("Opaque"),
            immutable: Some(false),
            ..Default::default()
        };
        secret
            .data
            .insert("bin".into(), vec![0x00, 0x9f, 0x92, 0x96, 0xff]);
        secret.data.insert("empty".into(), Vec::new());
        secret.string_data.insert("plain".into(), "text".into());
        let json = decode(&body("v1", "Secret", &secret)).unwrap();
        let expected = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "type": "Opaque",
            "immutable": false,
            "data": {"bin": "AJ+Slv8=", "empty": ""},
            "stringData": {"plain": "text"},
        });
        assert_eq!(json, expected);
        assert_typed::<k8s_openapi::api::core::v1::Secret>(&json);
    }

    #[test]
    fn a_service_target_port_becomes_a_number_or_a_string() {
        let port = |name: &str, number: i32, target: Option<IntOrString>| core::ServicePort {
            name: s(name),
            protocol: s("TCP"),
            port: Some(number),
            target_port: target,
            node_port: Some(0),
            ..Default::default()
        };
        let service = core::Service {
            metadata: Some(object_meta("web")),
            spec: Some(core::ServiceSpec {
                ports: vec![
                    port("http", 80, int(8080)),
                    port("https", 443, string("https")),
                    port("dns", 53, int(0)),
                ],
                r#type: s("ClusterIP"),
                cluster_ip: s(""),
                allocate_load_balancer_node_ports: Some(false),
                ip_families: vec!["IPv4".into()],
                ..Default::default()
            }),
            status: Some(core::ServiceStatus::default()),
        };
        let json = decode(&body("v1", "Service", &service)).unwrap();
        assert_eq!(
            json["spec"],
            json!({
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                    {"name": "https", "protocol": "TCP", "port": 443, "targetPort": "https"},
                    {"name": "dns", "protocol": "TCP", "port": 53},
                ],
                "type": "ClusterIP",
                "allocateLoadBalancerNodePorts": false,
                "ipFamilies": ["IPv4"],
            })
        );
        assert_typed::<k8s_openapi::api::core::v1::Service>(&json);
    }

    #[test]
    fn a_pod_flattens_embedded_go_structs() {
        let reference = |name: &str| {
            Some(core::LocalObjectReference {
                name: Some(name.to_string()),
            })
        };
        let pod = core::Pod {
            metadata: Some(object_meta("p")),
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: s("c"),
                    env: vec![core::EnvVar {
                        name: s("PASSWORD"),
                        value_from: Some(core::EnvVarSource {
                            secret_key_ref: Some(core::SecretKeySelector {
                                local_object_reference: reference("creds"),
                                key: s("password"),
                                optional: Some(false),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    readiness_probe: Some(core::Probe {
                        handler: Some(core::ProbeHandler {
                            http_get: Some(core::HttpGetAction {
                                path: s("/healthz"),
                                port: int(8080),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        initial_delay_seconds: Some(0),
                        period_seconds: Some(5),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                volumes: vec![core::Volume {
                    name: s("config"),
                    volume_source: Some(core::VolumeSource {
                        config_map: Some(core::ConfigMapVolumeSource {
                            local_object_reference: reference("settings"),
                            default_mode: Some(0o644),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }],
                ephemeral_containers: vec![core::EphemeralContainer {
                    ephemeral_container_common: Some(core::EphemeralContainerCommon {
                        name: s("debug"),
                        image: s("busybox"),
                        ..Default::default()
                    }),
                    target_container_name: s("c"),
                }],
                ..Default::default()
            }),
            status: None,
        };
        let json = decode(&body("v1", "Pod", &pod)).unwrap();
        assert_eq!(
            json["spec"],
            json!({
                "containers": [{
                    "name": "c",
                    "env": [{
                        "name": "PASSWORD",
                        "valueFrom": {
                            "secretKeyRef": {"name": "creds", "key": "password", "optional": false},
                        },
                    }],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5},
                }],
                "volumes": [{"name": "config", "configMap": {"name": "settings", "defaultMode": 420}}],
                "ephemeralContainers": [{"name": "debug", "image": "busybox", "targetContainerName": "c"}],
            })
        );
        assert_typed::<k8s_openapi::api::core::v1::Pod>(&json);
    }

    #[test]
    fn managed_fields_carry_their_time_and_embedded_json() {
        let mut metadata = object_meta("cm");
        metadata.creation_timestamp = Some(meta::Time {
            seconds: Some(1_700_000_000),
            nanos: Some(123),
        });
        metadata.managed_fields = vec![meta::ManagedFieldsEntry {
            manager: s("kubectl-create"),
            operation: s("Update"),
            api_version: s("v1"),
            time: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: None,
            }),
            fields_type: s("FieldsV1"),
            fields_v1: Some(meta::FieldsV1 {
                raw: Some(br#"{"f:data":{".":{},"f:a":{}}}"#.to_vec()),
            }),
            subresource: s(""),
        }];
        let mut config_map = core::ConfigMap {
            metadata: Some(metadata),
            ..Default::default()
        };
        config_map.data.insert("a".into(), "1".into());
        let json = decode(&body("v1", "ConfigMap", &config_map)).unwrap();
        assert_eq!(
            json["metadata"],
            json!({
                "name": "cm",
                "creationTimestamp": "2023-11-14T22:13:20Z",
                "managedFields": [{
                    "manager": "kubectl-create",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2023-11-14T22:13:20Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {".": {}, "f:a": {}}},
                }],
            })
        );
        assert_typed::<k8s_openapi::api::core::v1::ConfigMap>(&json);
    }

    #[test]
    fn lease_times_keep_microseconds_and_zero_counts() {
        let lease = coordination::Lease {
            metadata: Some(object_meta("leader")),
            spec: Some(coordination::LeaseSpec {
                holder_identity: s("node-a"),
                lease_duration_seconds: Some(15),
                renew_time: Some(meta::MicroTime {
                    seconds: Some(1_700_000_000),
                    nanos: Some(123_456_789),
                }),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        let json = decode(&body("coordination.k8s.io/v1", "Lease", &lease)).unwrap();
        assert_eq!(
            json["spec"],
            json!({
                "holderIdentity": "node-a",
                "leaseDurationSeconds": 15,
                "renewTime": "2023-11-14T22:13:20.123456Z",
                "leaseTransitions": 0,
            })
        );
        assert_typed::<k8s_openapi::api::coordination::v1::Lease>(&json);
    }

    #[test]
    fn endpoint_slice_conditions_keep_false() {
        let slice = discovery::EndpointSlice {
            metadata: Some(object_meta("web-abc")),
            address_type: s("IPv4"),
            endpoints: vec![discovery::Endpoint {
                addresses: vec!["10.0.0.5".into()],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(false),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Default::default()
            }],
            ports: vec![discovery::EndpointPort {
                name: s(""),
                port: Some(0),
                ..Default::default()
            }],
        };
        let json = decode(&body("discovery.k8s.io/v1", "EndpointSlice", &slice)).unwrap();
        assert_eq!(
            json["endpoints"],
            json!([{
                "addresses": ["10.0.0.5"],
                "conditions": {"ready": false, "serving": true, "terminating": false},
            }])
        );
        assert_eq!(json["ports"], json!([{"name": "", "port": 0}]));
        assert_typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(&json);
    }

    #[test]
    fn scaling_to_zero_keeps_replicas() {
        let scale = autoscaling::Scale {
            metadata: Some(object_meta("web")),
            spec: Some(autoscaling::ScaleSpec { replicas: Some(0) }),
            status: Some(autoscaling::ScaleStatus {
                replicas: Some(0),
                selector: s(""),
            }),
        };
        let json = decode(&body("autoscaling/v1", "Scale", &scale)).unwrap();
        assert_eq!(json["spec"], json!({"replicas": 0}));
        assert_eq!(json["status"], json!({"replicas": 0}));
        assert_typed::<k8s_openapi::api::autoscaling::v1::Scale>(&json);
    }

    #[test]
    fn delete_options_are_accepted_under_any_api_version() {
        let options = meta::DeleteOptions {
            grace_period_seconds: Some(0),
            propagation_policy: s("Foreground"),
            ..Default::default()
        };
        for api_version in ["v1", "apps/v1", "meta.k8s.io/v1"] {
            let json = decode(&body(api_version, "DeleteOptions", &options)).unwrap();
            assert_eq!(
                json,
                json!({
                    "apiVersion": api_version,
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "propagationPolicy": "Foreground",
                })
            );
        }
    }

    #[test]
    fn packed_and_unpacked_repeated_scalars_decode_alike() {
        // PodSecurityContext.supplementalGroups is field 4, repeated int64.
        let unpacked = core::PodSecurityContext {
            supplemental_groups: vec![1, 2, -3],
            ..Default::default()
        }
        .encode_to_vec();
        let mut values = Vec::new();
        for v in [1i64, 2, -3] {
            values.extend(encode_varint(v as u64));
        }
        let packed = len_delimited(4, &values);
        assert_ne!(unpacked, packed);
        for security_context in [unpacked, packed] {
            let spec = len_delimited(14, &security_context);
            let pod = len_delimited(2, &spec);
            let json = decode(&envelope("v1", "Pod", pod)).unwrap();
            assert_eq!(
                json["spec"]["securityContext"]["supplementalGroups"],
                json!([1, 2, -3])
            );
        }
    }

    #[test]
    fn negative_int32_values_decode_from_ten_byte_varints() {
        let encoded = apps::DeploymentSpec {
            replicas: Some(-1),
            ..Default::default()
        }
        .encode_to_vec();
        // key + 10 bytes of sign-extended varint.
        assert_eq!(encoded.len(), 11);
        let deployment = len_delimited(2, &encoded);
        let json = decode(&envelope("apps/v1", "Deployment", deployment)).unwrap();
        assert_eq!(json["spec"]["replicas"], json!(-1));
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut raw = core::ConfigMap {
            metadata: Some(object_meta("cm")),
            ..Default::default()
        }
        .encode_to_vec();
        raw.extend(key(900, 0));
        raw.extend(encode_varint(u64::MAX));
        raw.extend(key(901, 1));
        raw.extend([1u8; 8]);
        raw.extend(len_delimited(902, b"whatever"));
        raw.extend(key(903, 5));
        raw.extend([1u8; 4]);
        let json = decode(&envelope("v1", "ConfigMap", raw)).unwrap();
        assert_eq!(
            json,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}})
        );
    }

    #[test]
    fn a_repeated_singular_message_merges_like_protobuf() {
        let first = meta::ObjectMeta {
            name: s("a"),
            labels: [("x".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let second = meta::ObjectMeta {
            namespace: s("ns"),
            labels: [("y".to_string(), "2".to_string())].into(),
            ..Default::default()
        };
        let mut raw = len_delimited(1, &first.encode_to_vec());
        raw.extend(len_delimited(1, &second.encode_to_vec()));
        let json = decode(&envelope("v1", "ConfigMap", raw)).unwrap();
        assert_eq!(
            json["metadata"],
            json!({"name": "a", "namespace": "ns", "labels": {"x": "1", "y": "2"}})
        );
    }

    #[test]
    fn a_body_without_the_magic_is_rejected() {
        let error = decode(b"{\"kind\":\"Pod\"}").unwrap_err();
        assert_eq!(error, ProtobufError::NoMagic);
        assert_eq!(
            error.to_string(),
            "protobuf body does not start with the k8s magic (\"k8s\\0\")"
        );
    }

    #[test]
    fn an_unknown_kind_is_rejected_with_its_name() {
        let error = decode(&envelope("apps/v1", "Foo", Vec::new())).unwrap_err();
        assert!(
            error.to_string().starts_with("unknown kind apps/v1 Foo"),
            "{error}"
        );
        assert_eq!(
            decode(&envelope("", "", Vec::new())).unwrap_err(),
            ProtobufError::NoKind
        );
    }

    #[test]
    fn a_truncated_field_names_the_field_and_its_message() {
        // ContainerPort.hostPort (field 2) with its varint cut off.
        let mut port = key(2, 0);
        port.push(0x80);
        let container = len_delimited(6, &port);
        let spec = len_delimited(2, &container);
        let pod = len_delimited(2, &spec);
        let error = decode(&envelope("v1", "Pod", pod)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "truncated field 2 (hostPort) in k8s.io.api.core.v1.ContainerPort"
        );
    }

    #[test]
    fn invalid_utf8_in_a_string_is_rejected() {
        let meta = len_delimited(1, &[0xff, 0xfe]);
        let error = decode(&envelope("v1", "Namespace", len_delimited(1, &meta))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field 1 (name) in k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta is not valid UTF-8"
        );
    }

    #[test]
    fn a_wrong_wire_type_is_rejected() {
        // ObjectMeta.name as a varint.
        let mut meta = key(1, 0);
        meta.push(1);
        let error = decode(&envelope("v1", "Namespace", len_delimited(1, &meta))).unwrap_err();
        assert!(
            matches!(error, ProtobufError::WireType { wire: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn an_int_or_string_of_an_impossible_type_is_rejected() {
        let port = core::ServicePort {
            target_port: Some(IntOrString {
                r#type: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = len_delimited(1, &port.encode_to_vec());
        let error = decode(&envelope("v1", "Service", len_delimited(2, &spec))).unwrap_err();
        assert!(error.to_string().contains("type 7 is neither"), "{error}");
    }

    #[test]
    fn encoded_or_non_protobuf_payloads_are_rejected() {
        let mut unknown = runtime::Unknown {
            type_meta: Some(runtime::TypeMeta {
                api_version: s("v1"),
                kind: s("Namespace"),
            }),
            raw: Some(Vec::new()),
            content_encoding: s("gzip"),
            content_type: s(""),
        };
        let wrap = |unknown: &runtime::Unknown| {
            let mut out = MAGIC.to_vec();
            out.extend(unknown.encode_to_vec());
            out
        };
        assert!(matches!(
            decode(&wrap(&unknown)),
            Err(ProtobufError::ContentEncoding(_))
        ));
        unknown.content_encoding = None;
        unknown.content_type = s("application/json");
        assert!(matches!(
            decode(&wrap(&unknown)),
            Err(ProtobufError::ContentType { .. })
        ));
        unknown.content_type = s(PROTOBUF);
        assert!(decode(&wrap(&unknown)).is_ok());
    }

    #[test]
    fn nesting_beyond_the_limit_is_rejected() {
        let pod = message(
            schema::ROOTS
                .iter()
                .find(|r| r.kind == "Pod")
                .unwrap()
                .message,
        )
        .unwrap();
        let spec = len_delimited(2, &[]);
        let mut out = Map::new();
        assert!(decode_into(&spec, pod, MAX_DEPTH, &mut out).is_err());
        let error = decode_into(&spec, pod, MAX_DEPTH + 1, &mut out).unwrap_err();
        assert!(matches!(error, ProtobufError::TooDeep { .. }), "{error}");
    }

    #[test]
    fn times_format_like_go() {
        let time = |seconds: i64, nanos: i32, name| {
            let encoded = meta::MicroTime {
                seconds: Some(seconds),
                nanos: Some(nanos),
            }
            .encode_to_vec();
            super::time(&encoded, name).unwrap()
        };
        assert_eq!(time(0, 0, TIME), Some(json!("1970-01-01T00:00:00Z")));
        assert_eq!(
            time(951_782_400, 0, TIME),
            Some(json!("2000-02-29T00:00:00Z"))
        );
        assert_eq!(time(-1, 0, TIME), Some(json!("1969-12-31T23:59:59Z")));
        assert_eq!(
            time(MIN_SECONDS, 0, TIME),
            Some(json!("0000-01-01T00:00:00Z"))
        );
        assert_eq!(
            time(MAX_SECONDS, 999, TIME),
            Some(json!("9999-12-31T23:59:59Z"))
        );
        assert_eq!(time(GO_ZERO_SECONDS, 0, TIME), None);
        assert_eq!(super::time(&[], TIME).unwrap(), None);
        assert_eq!(
            time(1, 999_999, MICRO_TIME),
            Some(json!("1970-01-01T00:00:01.000999Z"))
        );
        assert_eq!(
            time(1, -1, MICRO_TIME),
            Some(json!("1970-01-01T00:00:00.999999Z"))
        );
        let out_of_range = meta::Time {
            seconds: Some(MAX_SECONDS + 1),
            nanos: None,
        }
        .encode_to_vec();
        assert!(super::time(&out_of_range, TIME).is_err());
        let extreme = meta::Time {
            seconds: Some(i64::MAX),
            nanos: Some(i32::MAX),
        }
        .encode_to_vec();
        assert!(super::time(&extreme, MICRO_TIME).is_err());
    }

    #[test]
    fn durations_format_like_go() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (-5_400_000_000_000, "-1h30m0s"),
            (90_061_000_000_001, "25h1m1.000000001s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for (nanos, expected) in cases {
            assert_eq!(go_duration(nanos), expected);
        }
        let encoded = meta::Duration {
            duration: Some(3_600_000_000_000),
        }
        .encode_to_vec();
        let at = special_at(DURATION, 1);
        assert_eq!(
            len_value(&encoded, Type::Duration, at, 0).unwrap(),
            Some(json!("1h0m0s"))
        );
    }

    #[test]
    fn raw_extensions_carry_json_and_reject_anything_else() {
        let at = special_at(RAW_EXTENSION, 1);
        let raw = |bytes: &[u8]| {
            runtime::RawExtension {
                raw: Some(bytes.to_vec()),
            }
            .encode_to_vec()
        };
        assert_eq!(
            len_value(&raw(br#"{"a":[1]}"#), Type::RawExtension, at, 0).unwrap(),
            Some(json!({"a": [1]}))
        );
        assert_eq!(
            len_value(&raw(b""), Type::RawExtension, at, 0).unwrap(),
            None
        );
        assert!(len_value(&raw(b"k8s\0"), Type::RawExtension, at, 0).is_err());
        let deep = "[".repeat(10_000);
        assert!(len_value(&raw(deep.as_bytes()), Type::RawExtension, at, 0).is_err());
    }

    #[test]
    fn the_schema_table_is_consistent() {
        let messages = schema::MESSAGES;
        assert!(messages.windows(2).all(|w| w[0].name < w[1].name));
        for message in messages {
            assert!(
                message.fields.windows(2).all(|w| w[0].tag < w[1].tag),
                "{}",
                message.name
            );
            for field in message.fields {
                if let Type::Msg(index) = field.ty {
                    assert!(usize::from(index) < messages.len());
                }
                if field.label == Label::Inline {
                    assert!(matches!(field.ty, Type::Msg(_)), "{}", message.name);
                }
            }
        }
        assert!(
            schema::ROOTS
                .iter()
                .all(|r| usize::from(r.message) < messages.len())
        );
    }

    /// A valid body with a bit of everything, for mutation tests.
    fn sample_deployment() -> Vec<u8> {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("app".to_string(), "web".to_string());
        let deployment = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: s("web"),
                labels: labels.clone(),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(1_700_000_000),
                    nanos: None,
                }),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(3),
                selector: Some(meta::LabelSelector {
                    match_labels: labels,
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: None,
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: s("web"),
                            image: s("nginx"),
                            ports: vec![core::ContainerPort {
                                container_port: Some(80),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: s("RollingUpdate"),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: string("25%"),
                        max_surge: int(1),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        body("apps/v1", "Deployment", &deployment)
    }

    #[test]
    fn every_truncation_of_a_valid_body_fails_cleanly_or_decodes() {
        let body = sample_deployment();
        assert!(decode(&body).is_ok());
        for len in 0..body.len() {
            let _ = decode(&body[..len]);
        }
    }

    /// xorshift64*: deterministic choices for the schema-guided generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn text(&mut self) -> String {
            (0..self.below(6))
                .map(|_| char::from(b'a' + self.below(26) as u8))
                .collect()
        }
    }

    /// A random, well-formed encoding of a message from the table.
    fn random_message(rng: &mut Rng, index: u16, depth: usize) -> Vec<u8> {
        let message = message(index).unwrap();
        let mut out = Vec::new();
        if message.fields.is_empty() || depth > 10 {
            return out;
        }
        for _ in 0..rng.below(6) {
            let field = &message.fields[rng.below(message.fields.len())];
            if field.label == Label::Map {
                let mut entry = len_delimited(1, rng.text().as_bytes());
                entry.extend(random_field(rng, 2, field.ty, depth));
                out.extend(len_delimited(field.tag, &entry));
            } else {
                out.extend(random_field(rng, field.tag, field.ty, depth));
            }
        }
        // k8s-openapi requires some times (Condition.lastTransitionTime) and has no default for
        // them; real clients always send those.
        for field in message.fields {
            if matches!(field.ty, Type::Time | Type::MicroTime) && field.label == Label::One {
                out.extend(random_field(rng, field.tag, field.ty, depth));
            }
        }
        out
    }

    fn random_field(rng: &mut Rng, tag: u32, ty: Type, depth: usize) -> Vec<u8> {
        let varint_field = |value: u64| {
            let mut out = key(tag, 0);
            out.extend(encode_varint(value));
            out
        };
        let seconds = Some(rng.below(4_000_000_000) as i64);
        match ty {
            Type::Bool => varint_field(rng.below(2) as u64),
            // Sign-extended, as protobuf encodes negative int32s.
            Type::Int32 => varint_field(rng.next() as i32 as i64 as u64),
            Type::Int64 => varint_field(rng.next()),
            Type::Double => {
                let mut out = key(tag, 1);
                out.extend((rng.below(1000) as f64 / 8.0).to_le_bytes());
                out
            }
            Type::String => len_delimited(tag, rng.text().as_bytes()),
            Type::Bytes => len_delimited(tag, &rng.next().to_le_bytes()[..rng.below(9)]),
            Type::Msg(index) => len_delimited(tag, &random_message(rng, index, depth + 1)),
            Type::Time | Type::MicroTime => {
                let time = meta::MicroTime {
                    seconds,
                    nanos: Some(rng.below(1_000_000_000) as i32),
                };
                len_delimited(tag, &time.encode_to_vec())
            }
            Type::Duration => {
                let duration = meta::Duration {
                    duration: Some(rng.next() as i64),
                };
                len_delimited(tag, &duration.encode_to_vec())
            }
            Type::IntOrString => {
                let value = if rng.below(2) == 0 {
                    int(rng.next() as i32)
                } else {
                    string(&rng.text())
                };
                len_delimited(tag, &value.unwrap().encode_to_vec())
            }
            Type::Quantity => {
                let quantity = Quantity {
                    string: Some(format!("{}m", rng.below(5000))),
                };
                len_delimited(tag, &quantity.encode_to_vec())
            }
            Type::RawExtension | Type::FieldsV1 => {
                let raw = meta::FieldsV1 {
                    raw: Some(format!(r#"{{"f:{}":{{}}}}"#, rng.text()).into_bytes()),
                };
                len_delimited(tag, &raw.encode_to_vec())
            }
        }
    }

    /// Deserializes into the k8s-openapi type of `kind`.
    fn typed(kind: &str, json: Value) -> Result<(), serde_json::Error> {
        use k8s_openapi::api::{apps, autoscaling, coordination, core, discovery};
        use k8s_openapi::apimachinery::pkg::apis::meta;
        fn de<T: serde::de::DeserializeOwned>(json: Value) -> Result<(), serde_json::Error> {
            serde_json::from_value::<T>(json).map(drop)
        }
        match kind {
            "Namespace" => de::<core::v1::Namespace>(json),
            "Node" => de::<core::v1::Node>(json),
            "Pod" => de::<core::v1::Pod>(json),
            "Service" => de::<core::v1::Service>(json),
            "Endpoints" => de::<core::v1::Endpoints>(json),
            "Event" => de::<core::v1::Event>(json),
            "ConfigMap" => de::<core::v1::ConfigMap>(json),
            "Secret" => de::<core::v1::Secret>(json),
            "Binding" => de::<core::v1::Binding>(json),
            "Deployment" => de::<apps::v1::Deployment>(json),
            "ReplicaSet" => de::<apps::v1::ReplicaSet>(json),
            "DaemonSet" => de::<apps::v1::DaemonSet>(json),
            "EndpointSlice" => de::<discovery::v1::EndpointSlice>(json),
            "Lease" => de::<coordination::v1::Lease>(json),
            "Scale" => de::<autoscaling::v1::Scale>(json),
            "DeleteOptions" => de::<meta::v1::DeleteOptions>(json),
            other => panic!("no k8s-openapi type for {other}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(tail in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut body = MAGIC.to_vec();
            body.extend(&tail);
            let _ = decode(&body);
            let _ = decode(&tail);
        }

        #[test]
        fn decoding_arbitrary_objects_of_every_kind_never_panics(
            root in 0..schema::ROOTS.len(),
            raw in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let root = &schema::ROOTS[root];
            let api_version = if root.api_version.is_empty() { "v1" } else { root.api_version };
            let _ = decode(&envelope(api_version, root.kind, raw));
        }

        #[test]
        fn random_well_formed_objects_of_every_kind_decode_into_their_openapi_types(seed in any::<u64>()) {
            let mut rng = Rng(seed | 1);
            for root in schema::ROOTS {
                let api_version = if root.api_version.is_empty() { "v1" } else { root.api_version };
                let raw = random_message(&mut rng, root.message, 1);
                let json = decode(&envelope(api_version, root.kind, raw.clone()));
                let json = json.map_err(|e| TestCaseError::fail(format!("{}: {e}", root.kind)))?;
                if let Err(e) = typed(root.kind, json.clone()) {
                    return Err(TestCaseError::fail(format!("{} {json}: {e}", root.kind)));
                }
                // Any corruption of it fails cleanly.
                let mut body = envelope(api_version, root.kind, raw);
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(body.len());
                    body[i] = rng.next() as u8;
                }
                let _ = decode(&body);
            }
        }

        #[test]
        fn decoding_mutated_deployments_never_panics(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut body = sample_deployment();
            for (index, byte) in edits {
                let i = index.index(body.len());
                body[i] = byte;
            }
            let _ = decode(&body);
        }
    }
}
