//! proto3 JSON for the command line: the serde code generated for each
//! message (`pbjson-build` in `build.rs`), and reflection over the built-in
//! descriptors where that code refuses a message.
//!
//! The generated code refuses enum numbers this build does not know (a
//! newer hub's), which proto3 JSON writes and reads as numbers; an export
//! or a mirror must not stop at them, so those messages take the slower
//! reflective path.

use anyhow::Context;
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use serde::{Serialize, de::DeserializeOwned};

use crate::domain::record::schema;

/// One message as a proto3 JSON object on one line.
pub fn to_json<M: Serialize + Message + Name>(msg: &M) -> anyhow::Result<String> {
    match serde_json::to_string(msg) {
        Ok(text) => Ok(text),
        Err(_) => reflective_to_json(msg),
    }
}

/// The same, indented for people.
pub fn to_pretty_json<M: Serialize + Message + Name>(msg: &M) -> anyhow::Result<String> {
    match serde_json::to_string_pretty(msg) {
        Ok(text) => Ok(text),
        Err(_) => {
            let value: serde_json::Value = serde_json::from_str(&reflective_to_json(msg)?)?;
            Ok(serde_json::to_string_pretty(&value)?)
        }
    }
}

/// Parses proto3 JSON (camelCase or original field names; unknown fields
/// are an error) into `M`.
pub fn from_json<M: DeserializeOwned + Message + Name + Default>(text: &str) -> anyhow::Result<M> {
    match serde_json::from_str(text) {
        Ok(msg) => Ok(msg),
        Err(err) => reflective_from_json(text).map_err(|_| err.into()),
    }
}

fn descriptor<M: Name>() -> anyhow::Result<MessageDescriptor> {
    let full_name = M::full_name();
    schema()
        .pool()
        .get_message_by_name(&full_name)
        .with_context(|| format!("no message {full_name} in the built-in descriptors"))
}

fn reflective_to_json<M: Message + Name>(msg: &M) -> anyhow::Result<String> {
    let dynamic = DynamicMessage::decode(descriptor::<M>()?, msg.encode_to_vec().as_slice())?;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    dynamic.serialize_with_options(&mut serializer, &SerializeOptions::new())?;
    Ok(String::from_utf8(out)?)
}

fn reflective_from_json<M: Message + Name + Default>(text: &str) -> anyhow::Result<M> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor::<M>()?, &mut deserializer)?;
    deserializer.end()?;
    Ok(M::decode(dynamic.encode_to_vec().as_slice())?)
}
