//! Strategies of discovery.k8s.io and coordination.k8s.io resources.

use serde_json::{Value, json};

use super::Strategy;
use super::meta::{default_field, each_mut, str_at};
use super::table::{Column, col, or_none};
use super::validation::{NameRule, validate_object_meta};
use crate::api::errors::FieldError;

pub struct EndpointSliceStrategy;
impl Strategy for EndpointSliceStrategy {
    fn default(&self, obj: &mut Value) {
        each_mut(obj, &["ports"], |p| {
            default_field(p, "protocol", json!("TCP"))
        });
    }
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Subdomain, &mut errs);
        let at = str_at(obj, "/addressType");
        if !matches!(at, "IPv4" | "IPv6" | "FQDN") {
            errs.push(FieldError::not_supported(
                "addressType",
                at,
                &["FQDN", "IPv4", "IPv6"],
            ));
        }
        let endpoints = obj.get("endpoints").and_then(Value::as_array);
        if endpoints.is_some_and(|e| e.len() > 1000) {
            errs.push(FieldError {
                field: "endpoints".into(),
                reason: "FieldValueTooMany",
                message: "Too many: must have at most 1000 items".into(),
            });
        }
        for (i, e) in endpoints.into_iter().flatten().enumerate() {
            if e.get("addresses")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                errs.push(FieldError::required(format!("endpoints[{i}].addresses")));
            }
        }
        errs
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[
            col("AddressType", "The IP protocol for this slice"),
            col("Ports", "The ports for this slice"),
            col("Endpoints", "The endpoints for this slice"),
        ];
        C
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let ports: Vec<String> = obj
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("port").and_then(Value::as_i64).map(|p| p.to_string()))
            .collect();
        let addrs: Vec<&str> = obj
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/addresses/0")?.as_str())
            .collect();
        let shown = if addrs.len() > 3 {
            format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
        } else {
            addrs.join(",")
        };
        vec![
            json!(str_at(obj, "/addressType")),
            or_none(ports.join(",")),
            or_none(shown),
        ]
    }
}

pub struct LeaseStrategy;
impl Strategy for LeaseStrategy {
    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_object_meta(obj, NameRule::Subdomain, &mut errs);
        errs
    }
    fn columns(&self) -> &'static [Column] {
        const C: &[Column] = &[col("Holder", "The holder of the lease")];
        C
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![or_none(str_at(obj, "/spec/holderIdentity").to_owned())]
    }
}
