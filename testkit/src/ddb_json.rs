//! DynamoDB's typed JSON (`{"S": "x"}`, `{"N": "1"}`, ...), the shape `dump_tables` prints, from the
//! SDK's attribute values.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// One attribute value as typed JSON.
pub fn table_value(value: &AttributeValue) -> Value {
    use AttributeValue as A;
    match value {
        A::S(s) => json!({ "S": s }),
        A::N(n) => json!({ "N": n }),
        A::B(b) => json!({ "B": STANDARD.encode(b.as_ref()) }),
        A::Ss(v) => json!({ "SS": v }),
        A::Ns(v) => json!({ "NS": v }),
        A::Bs(v) => {
            json!({ "BS": v.iter().map(|b| STANDARD.encode(b.as_ref())).collect::<Vec<_>>() })
        }
        A::M(m) => json!({ "M": table_item(m) }),
        A::L(l) => json!({ "L": l.iter().map(table_value).collect::<Vec<_>>() }),
        A::Null(b) => json!({ "NULL": b }),
        A::Bool(b) => json!({ "BOOL": b }),
        _ => json!({ "UNKNOWN": format!("{value:?}") }),
    }
}

/// An item (attribute name to value) as typed JSON, names in order.
pub fn table_item(item: &HashMap<String, AttributeValue>) -> Value {
    let names: BTreeMap<&String, Value> = item.iter().map(|(k, v)| (k, table_value(v))).collect();
    json!(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::AttributeValue as A;

    #[test]
    fn every_kind_has_dynamodbs_type_letter() {
        let item = HashMap::from([
            ("s".to_string(), A::S("x".into())),
            ("n".to_string(), A::N("1".into())),
            ("b".to_string(), A::B(Blob::new(vec![0xff]))),
            ("l".to_string(), A::L(vec![A::Bool(true), A::Null(true)])),
            (
                "m".to_string(),
                A::M(HashMap::from([("ss".to_string(), A::Ss(vec!["a".into()]))])),
            ),
        ]);
        assert_eq!(
            table_item(&item),
            json!({
                "b": {"B": "/w=="}, "l": {"L": [{"BOOL": true}, {"NULL": true}]},
                "m": {"M": {"ss": {"SS": ["a"]}}}, "n": {"N": "1"}, "s": {"S": "x"}
            })
        );
    }
}
