//! Client libraries other than kubectl: the kube crate (watcher, reflector) and the official
//! Python client.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Server, need};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, reflector, watcher};

async fn client(s: &Server) -> kube::Client {
    let kc = Kubeconfig::read_from(&s.kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"v": "1"}}))
        .unwrap()
}

async fn next<T>(stream: &mut futures::stream::BoxStream<'static, Result<T, watcher::Error>>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the stream goes on")
        .expect("no watch error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_watcher_and_reflector_follow_the_server() {
    let s = Server::start();
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    api.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();

    let (reader, writer) = reflector::store();
    let mut stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    assert_eq!(
        next(&mut stream).await.metadata.name.as_deref(),
        Some("before")
    );
    api.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut stream).await.metadata.name.as_deref(),
        Some("after")
    );
    let patch = serde_json::json!({"data": {"v": "2"}});
    api.patch("after", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let changed = next(&mut stream).await;
    assert_eq!(changed.data.unwrap()["v"], "2");
    let mut names: Vec<String> = reader
        .state()
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["after", "before"]);
}

/// Metadata-only clients (PartialObjectMetadata lists, gets and watches) get each object's
/// metadata, resourceVersion included, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_views_carry_the_metadata_only() {
    let s = Server::start();
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    let mut labelled = cm("meta-a");
    labelled.metadata.labels = Some([("tier".to_owned(), "web".to_owned())].into());
    let created = api.create(&PostParams::default(), &labelled).await.unwrap();

    let list = api.list_metadata(&Default::default()).await.unwrap();
    let item = list
        .items
        .iter()
        .find(|i| i.metadata.name.as_deref() == Some("meta-a"))
        .expect("the config map is listed");
    assert_eq!(item.metadata.labels, created.metadata.labels);
    assert_eq!(
        item.metadata.resource_version,
        created.metadata.resource_version
    );
    let got = api.get_metadata("meta-a").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    // On the wire: the metadata list kind, and no data of the object.
    let req = http::Request::get("/api/v1/namespaces/default/configmaps")
        .header(
            "Accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
        .body(Vec::new())
        .unwrap();
    let raw = client(&s).await.request_text(req).await.unwrap();
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["kind"], "PartialObjectMetadataList");
    assert_eq!(raw["items"][0]["kind"], "PartialObjectMetadata");
    assert!(raw["items"][0].get("data").is_none(), "{raw}");

    let meta_api: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client(&s).await, "default");
    let mut stream = watcher(meta_api, watcher::Config::default())
        .applied_objects()
        .boxed();
    let first = next(&mut stream).await;
    assert_eq!(first.metadata.name.as_deref(), Some("meta-a"));
    api.create(&PostParams::default(), &cm("meta-b"))
        .await
        .unwrap();
    let second = next(&mut stream).await;
    assert_eq!(second.metadata.name.as_deref(), Some("meta-b"));
    assert!(second.metadata.resource_version.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_lists_continue_where_they_stopped() {
    let s = Server::start();
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    for i in 0..7 {
        api.create(&PostParams::default(), &cm(&format!("page-{i}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut params = kube::api::ListParams::default().limit(3);
    loop {
        let page = api.list(&params).await.unwrap();
        seen.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => break,
        }
        // Writes between pages do not disturb the snapshot being paged through.
        api.create(&PostParams::default(), &cm(&format!("late-{}", seen.len())))
            .await
            .unwrap();
    }
    assert_eq!(
        seen,
        (0..7).map(|i| format!("page-{i}")).collect::<Vec<_>>()
    );
}

/// Writes acknowledged under group commit survive the process being killed (SIGKILL, no
/// shutdown): every create that returned is there after a restart, and revisions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_concurrent_writes_survive_a_kill() {
    let mut s = Server::start();
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    let created: Vec<ConfigMap> = futures::stream::iter(0..300)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &cm(&format!("c-{i:03}")))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let newest = created
        .iter()
        .filter_map(|c| c.metadata.resource_version.as_deref()?.parse::<i64>().ok())
        .max()
        .unwrap();
    s.stop();

    let s2 = Server::start_in(&s.dir, &[]);
    let api: Api<ConfigMap> = Api::namespaced(client(&s2).await, "default");
    for c in &created {
        let name = c.metadata.name.as_deref().unwrap();
        let got = api.get(name).await.unwrap();
        assert_eq!(got.metadata.uid, c.metadata.uid, "{name}");
        assert_eq!(got.metadata.resource_version, c.metadata.resource_version);
    }
    let after = api
        .create(&PostParams::default(), &cm("after-restart"))
        .await
        .unwrap();
    let rv: i64 = after.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv > newest, "{rv} after {newest}");
}

#[test]
fn python_kubernetes_client_lists_creates_and_watches_pods() {
    if !need("python3", &["-c", "import kubernetes"]) {
        return;
    }
    let s = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_client.py");
    let out = std::process::Command::new("timeout")
        .args(["60", "python3", script])
        .arg(&s.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
