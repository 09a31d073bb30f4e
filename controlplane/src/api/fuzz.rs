//! Property tests over everything a client controls on the write path: bodies of any shape go
//! through decoding, defaulting, validation and every patch flavour without panicking.
#![cfg(test)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::handler::{FieldValidation, decode_object};
use super::patch::{PatchType, apply};
use crate::resources::RESOURCES;

/// Arbitrary JSON, biased towards Kubernetes-looking keys so deep paths get exercised.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z0-9:./-]{0,12}".prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("metadata".to_owned()),
        Just("spec".to_owned()),
        Just("status".to_owned()),
        Just("name".to_owned()),
        Just("labels".to_owned()),
        Just("containers".to_owned()),
        Just("template".to_owned()),
        Just("selector".to_owned()),
        Just("ports".to_owned()),
        Just("replicas".to_owned()),
        Just("finalizers".to_owned()),
        Just("$patch".to_owned()),
        Just("$setElementOrder/containers".to_owned()),
        Just("ownerReferences".to_owned()),
        "[a-zA-Z]{1,8}",
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoding_defaulting_and_validating_any_body_never_panics(body in arb_json(), idx in 0..RESOURCES.len()) {
        let res = &RESOURCES[idx];
        if let Ok((mut obj, _)) = decode_object(res, body, FieldValidation::Strict) {
            res.strategy.default(&mut obj);
            let _ = res.strategy.validate(&obj, None);
            let _ = res.strategy.validate(&obj, Some(&obj.clone()));
            let _ = res.strategy.cells(&obj);
            let _ = res.strategy.initial_status(&obj);
        }
    }

    #[test]
    fn every_patch_flavour_survives_any_patch(original in arb_json(), patch in arb_json(), idx in 0..RESOURCES.len()) {
        let kind = RESOURCES[idx].kind;
        for ty in [PatchType::Json, PatchType::Merge, PatchType::Strategic, PatchType::Apply] {
            let _ = apply(ty, &original, &patch, kind);
        }
    }
}
