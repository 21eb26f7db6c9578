//! A generic, read-only view of a pg_query parse tree, built through its serde `Serialize` impls.
//!
//! Why: pg_query's own `nodes()` iterator skips node types it has no use for,
//! and a hand-written walker over ~270 protobuf structs would silently miss
//! fields whenever PostgreSQL adds one. Every protobuf struct derives
//! `serde::Serialize`, so serializing into this small tree visits every field
//! of every node by construction; the checks in `walk.rs` then look only at
//! the node kinds and fields they care about.

use serde::Serialize;
use serde::ser::{self, Impossible};
use std::fmt;

/// One value of the tree. The protobuf `Node` wrapper and oneof enums are
/// collapsed, so a child is directly `Node("SelectStmt", fields)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// An absent optional field.
    Null,
    Bool(bool),
    /// Integers and protobuf enums (which prost stores as `i32`).
    Int(i64),
    Str(String),
    List(Vec<Value>),
    /// A protobuf message: its type name and its fields in declaration order.
    Node(&'static str, Vec<(&'static str, Value)>),
}

static NULL: Value = Value::Null;

impl Value {
    /// The message type name (`"RangeVar"`, `"FuncCall"`…), if this is a message.
    pub(crate) fn kind(&self) -> Option<&'static str> {
        match self {
            Value::Node(kind, _) => Some(kind),
            _ => None,
        }
    }

    /// A field of a message; `Null` when absent or when this is not a message.
    pub(crate) fn get(&self, key: &str) -> &Value {
        match self {
            Value::Node(_, fields) => fields
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A string field, or the value of a `String` node (`{"sval": …}`); empty strings are `None`
    /// because protobuf cannot tell an empty string from an unset one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) if !s.is_empty() => Some(s),
            Value::Node("String", _) => self.get("sval").as_str(),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> bool {
        matches!(self, Value::Bool(true))
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items of a list field; empty for anything else.
    pub(crate) fn items(&self) -> &[Value] {
        match self {
            Value::List(items) => items,
            _ => &[],
        }
    }

    /// Fields of a message or items of a list, for generic descent.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        let (fields, items): (&[(&'static str, Value)], &[Value]) = match self {
            Value::Node(_, fields) => (fields, &[]),
            Value::List(items) => (&[], items),
            _ => (&[], &[]),
        };
        fields
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(items.iter().map(|v| ("", v)))
    }
}

/// Builds the tree of any pg_query protobuf value.
pub(crate) fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, TreeError> {
    value.serialize(Builder)
}

/// A serde shape the protobuf types never produce (maps, floats as keys…):
/// it would mean pg_query changed its representation, so the statement is
/// refused rather than half-inspected.
#[derive(Debug)]
pub(crate) struct TreeError(String);

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected parse tree shape: {}", self.0)
    }
}

impl std::error::Error for TreeError {}

impl ser::Error for TreeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TreeError(msg.to_string())
    }
}

#[derive(Clone, Copy)]
struct Builder;

fn unsupported(what: &str) -> TreeError {
    TreeError(what.to_owned())
}

impl ser::Serializer for Builder {
    type Ok = Value;
    type Error = TreeError;
    type SerializeSeq = ListBuilder;
    type SerializeTuple = ListBuilder;
    type SerializeTupleStruct = ListBuilder;
    type SerializeTupleVariant = ListBuilder;
    type SerializeMap = Impossible<Value, TreeError>;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = StructBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, TreeError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, TreeError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, TreeError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, TreeError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, TreeError> {
        Ok(Value::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, TreeError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, TreeError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, TreeError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, TreeError> {
        // Only OIDs and the like are unsigned; none of the checks reads them.
        Ok(Value::Int(i64::try_from(v).unwrap_or(i64::MAX)))
    }
    fn serialize_f32(self, _: f32) -> Result<Value, TreeError> {
        Ok(Value::Null)
    }
    fn serialize_f64(self, _: f64) -> Result<Value, TreeError> {
        Ok(Value::Null)
    }
    fn serialize_char(self, v: char) -> Result<Value, TreeError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, TreeError> {
        Ok(Value::Str(v.to_owned()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Value, TreeError> {
        Ok(Value::Null)
    }
    fn serialize_none(self) -> Result<Value, TreeError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, TreeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, TreeError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<Value, TreeError> {
        Ok(Value::Node(name, Vec::new()))
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Value, TreeError> {
        Ok(Value::Node(variant, Vec::new()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Value, TreeError> {
        value.serialize(self)
    }
    /// A oneof variant (`node::Node::SelectStmt(…)`, `a_const::Val::Sval(…)`):
    /// its payload is a message that carries its own type name.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<Value, TreeError> {
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<ListBuilder, TreeError> {
        Ok(ListBuilder(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<ListBuilder, TreeError> {
        Ok(ListBuilder(Vec::with_capacity(len)))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<ListBuilder, TreeError> {
        Ok(ListBuilder(Vec::with_capacity(len)))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        len: usize,
    ) -> Result<ListBuilder, TreeError> {
        Ok(ListBuilder(Vec::with_capacity(len)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, TreeError> {
        Err(unsupported("map"))
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<StructBuilder, TreeError> {
        Ok(StructBuilder {
            name,
            fields: Vec::with_capacity(len),
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructBuilder, TreeError> {
        Ok(StructBuilder {
            name: variant,
            fields: Vec::with_capacity(len),
        })
    }
}

pub(crate) struct ListBuilder(Vec<Value>);

impl ser::SerializeSeq for ListBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        self.0.push(value.serialize(Builder)?);
        Ok(())
    }
    fn end(self) -> Result<Value, TreeError> {
        Ok(Value::List(self.0))
    }
}

impl ser::SerializeTuple for ListBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for ListBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for ListBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

pub(crate) struct StructBuilder {
    name: &'static str,
    fields: Vec<(&'static str, Value)>,
}

impl ser::SerializeStruct for StructBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        self.fields.push((key, value.serialize(Builder)?));
        Ok(())
    }
    fn end(self) -> Result<Value, TreeError> {
        // `Node { node: Option<node::Node> }` is only protobuf's way of
        // spelling "any node": replace it by the node it holds.
        if self.name == "Node" {
            return Ok(self
                .fields
                .into_iter()
                .find(|(k, _)| *k == "node")
                .map_or(Value::Null, |(_, v)| v));
        }
        Ok(Value::Node(self.name, self.fields))
    }
}

impl ser::SerializeStructVariant for StructBuilder {
    type Ok = Value;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<Value, TreeError> {
        ser::SerializeStruct::end(self)
    }
}
