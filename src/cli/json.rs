//! proto3 JSON for the command line, through the built-in descriptors.

use anyhow::Context;
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

use crate::domain::record::schema;

fn descriptor(full_name: &str) -> anyhow::Result<prost_reflect::MessageDescriptor> {
    schema()
        .pool()
        .get_message_by_name(full_name)
        .with_context(|| format!("no message {full_name} in the built-in descriptors"))
}

/// One message as a proto3 JSON object on one line.
pub fn to_json<M: Message>(msg: &M, full_name: &str) -> anyhow::Result<String> {
    let dynamic = DynamicMessage::decode(descriptor(full_name)?, msg.encode_to_vec().as_slice())?;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    dynamic.serialize_with_options(&mut serializer, &SerializeOptions::new())?;
    Ok(String::from_utf8(out)?)
}

/// The same, indented for people.
pub fn to_pretty_json<M: Message>(msg: &M, full_name: &str) -> anyhow::Result<String> {
    let value: serde_json::Value = serde_json::from_str(&to_json(msg, full_name)?)?;
    Ok(serde_json::to_string_pretty(&value)?)
}

/// Parses proto3 JSON (camelCase or original field names) into `M`.
pub fn from_json<M: Message + Default>(text: &str, full_name: &str) -> anyhow::Result<M> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor(full_name)?, &mut deserializer)?;
    deserializer.end()?;
    Ok(M::decode(dynamic.encode_to_vec().as_slice())?)
}
