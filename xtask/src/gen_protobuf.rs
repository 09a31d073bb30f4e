//! `cargo xtask gen-protobuf`: writes `controlplane/src/api/protobuf/schema.rs`, the table the
//! API server walks to turn Kubernetes protobuf request bodies into Kubernetes JSON.
//!
//! The wire layout (tag numbers, wire kinds, repeated, maps) comes from the prost structs of the
//! `k8s-pb` crate. JSON property names come from k8s-openapi's `Deserialize` impls, because
//! prost's snake_case names lose initialisms (`podIP` becomes `pod_ip`); k8s-openapi's struct
//! fields also tell which properties are required (Go writes those even when zero). Both crates
//! are located through `cargo metadata` (k8s-pb is a dev-dependency of skiff-controlplane).
//! The output depends only on those sources, so CI can regenerate it and `git diff --exit-code`,
//! or call [`check`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use syn::visit::Visit;

/// Where the table goes, relative to the workspace root.
const OUTPUT: &str = "controlplane/src/api/protobuf/schema.rs";

/// Kinds the decoder accepts at the top level: (apiVersion, kind, proto message). The table
/// holds everything reachable from them. Where k8s-pb has a `Resource` impl, the generator
/// checks apiVersion and kind against it. An empty apiVersion matches any: meta/v1 options are
/// registered in every group version, so clients send them under the apiVersion of the
/// resource they act on.
const ROOTS: &[(&str, &str, &str)] = &[
    ("v1", "Namespace", "k8s.io.api.core.v1.Namespace"),
    ("v1", "Node", "k8s.io.api.core.v1.Node"),
    ("v1", "Pod", "k8s.io.api.core.v1.Pod"),
    ("v1", "Service", "k8s.io.api.core.v1.Service"),
    ("v1", "Endpoints", "k8s.io.api.core.v1.Endpoints"),
    ("v1", "Event", "k8s.io.api.core.v1.Event"),
    ("v1", "ConfigMap", "k8s.io.api.core.v1.ConfigMap"),
    ("v1", "Secret", "k8s.io.api.core.v1.Secret"),
    ("v1", "Binding", "k8s.io.api.core.v1.Binding"),
    ("apps/v1", "Deployment", "k8s.io.api.apps.v1.Deployment"),
    ("apps/v1", "ReplicaSet", "k8s.io.api.apps.v1.ReplicaSet"),
    ("apps/v1", "DaemonSet", "k8s.io.api.apps.v1.DaemonSet"),
    (
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "k8s.io.api.discovery.v1.EndpointSlice",
    ),
    (
        "coordination.k8s.io/v1",
        "Lease",
        "k8s.io.api.coordination.v1.Lease",
    ),
    ("autoscaling/v1", "Scale", "k8s.io.api.autoscaling.v1.Scale"),
    (
        "",
        "DeleteOptions",
        "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    ),
];

/// A message with a JSON form of its own.
struct Special {
    proto: &'static str,
    /// The decoder's `Type` variant.
    variant: &'static str,
    /// The (tag, scalar) layout the decoder hard-codes, checked here so a k8s-pb update cannot
    /// drift from it.
    layout: &'static [(u32, Scalar)],
}

const SPECIAL: &[Special] = &[
    Special {
        proto: "k8s.io.apimachinery.pkg.api.resource.Quantity",
        variant: "Quantity",
        layout: &[(1, Scalar::String)],
    },
    Special {
        proto: "k8s.io.apimachinery.pkg.apis.meta.v1.Duration",
        variant: "Duration",
        layout: &[(1, Scalar::Int64)],
    },
    Special {
        proto: "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1",
        variant: "FieldsV1",
        layout: &[(1, Scalar::Bytes)],
    },
    Special {
        proto: "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime",
        variant: "MicroTime",
        layout: &[(1, Scalar::Int64), (2, Scalar::Int32)],
    },
    Special {
        proto: "k8s.io.apimachinery.pkg.apis.meta.v1.Time",
        variant: "Time",
        layout: &[(1, Scalar::Int64), (2, Scalar::Int32)],
    },
    Special {
        proto: "k8s.io.apimachinery.pkg.runtime.RawExtension",
        variant: "RawExtension",
        layout: &[(1, Scalar::Bytes)],
    },
    Special {
        proto: "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
        variant: "IntOrString",
        layout: &[(1, Scalar::Int64), (2, Scalar::Int32), (3, Scalar::String)],
    },
];

/// Optional fields whose Go type is a pointer, so a zero value (0, false, "", IntOrString 0) on
/// the wire was set on purpose and must reach the JSON. Go's protobuf marshaller writes
/// non-pointer fields even when zero, and Go's JSON omits those (omitempty), so every other
/// optional zero scalar is dropped. Required fields (non-`Option` in k8s-openapi; Go has no
/// omitempty on them) keep their zero values without being listed. Each entry must name a
/// singular scalar or IntOrString field of a reachable message, or generation fails.
#[rustfmt::skip]
const KEEP_ZERO: &[(&str, &[&str])] = &[
    ("k8s.io.api.apps.v1.DaemonSetSpec", &["revisionHistoryLimit"]),
    ("k8s.io.api.apps.v1.DaemonSetStatus", &["collisionCount"]),
    ("k8s.io.api.apps.v1.DeploymentSpec", &[
        "replicas", "revisionHistoryLimit", "progressDeadlineSeconds",
    ]),
    ("k8s.io.api.apps.v1.DeploymentStatus", &["collisionCount", "terminatingReplicas"]),
    ("k8s.io.api.apps.v1.ReplicaSetSpec", &["replicas"]),
    ("k8s.io.api.apps.v1.ReplicaSetStatus", &["terminatingReplicas"]),
    ("k8s.io.api.apps.v1.RollingUpdateDaemonSet", &["maxUnavailable", "maxSurge"]),
    ("k8s.io.api.apps.v1.RollingUpdateDeployment", &["maxUnavailable", "maxSurge"]),
    // Not a pointer in Go, but `kubectl scale --replicas=0` must not turn into "unset".
    ("k8s.io.api.autoscaling.v1.ScaleSpec", &["replicas"]),
    ("k8s.io.api.coordination.v1.LeaseSpec", &[
        "holderIdentity", "leaseDurationSeconds", "leaseTransitions", "strategy", "preferredHolder",
    ]),
    ("k8s.io.api.core.v1.AppArmorProfile", &["localhostProfile"]),
    ("k8s.io.api.core.v1.AzureDiskVolumeSource", &["cachingMode", "fsType", "readOnly", "kind"]),
    ("k8s.io.api.core.v1.CSIVolumeSource", &["readOnly", "fsType"]),
    ("k8s.io.api.core.v1.ClientIPConfig", &["timeoutSeconds"]),
    ("k8s.io.api.core.v1.ClusterTrustBundleProjection", &["name", "signerName", "optional"]),
    ("k8s.io.api.core.v1.ConfigMap", &["immutable"]),
    ("k8s.io.api.core.v1.ConfigMapEnvSource", &["optional"]),
    ("k8s.io.api.core.v1.ConfigMapKeySelector", &["optional"]),
    ("k8s.io.api.core.v1.ConfigMapProjection", &["optional"]),
    ("k8s.io.api.core.v1.ConfigMapVolumeSource", &["defaultMode", "optional"]),
    ("k8s.io.api.core.v1.Container", &["restartPolicy"]),
    ("k8s.io.api.core.v1.ContainerStatus", &["started", "stopSignal"]),
    ("k8s.io.api.core.v1.DownwardAPIVolumeFile", &["mode"]),
    ("k8s.io.api.core.v1.DownwardAPIVolumeSource", &["defaultMode"]),
    ("k8s.io.api.core.v1.EndpointAddress", &["nodeName"]),
    ("k8s.io.api.core.v1.EndpointPort", &["appProtocol"]),
    ("k8s.io.api.core.v1.EphemeralContainerCommon", &["restartPolicy"]),
    ("k8s.io.api.core.v1.FCVolumeSource", &["lun"]),
    ("k8s.io.api.core.v1.FileKeySelector", &["optional"]),
    ("k8s.io.api.core.v1.GRPCAction", &["service"]),
    ("k8s.io.api.core.v1.ISCSIVolumeSource", &["initiatorName"]),
    ("k8s.io.api.core.v1.KeyToPath", &["mode"]),
    ("k8s.io.api.core.v1.Lifecycle", &["stopSignal"]),
    ("k8s.io.api.core.v1.LoadBalancerIngress", &["ipMode"]),
    ("k8s.io.api.core.v1.NodeFeatures", &["supplementalGroupsPolicy"]),
    ("k8s.io.api.core.v1.NodeRuntimeHandlerFeatures", &[
        "recursiveReadOnlyMounts", "userNamespaces",
    ]),
    ("k8s.io.api.core.v1.NodeSwapStatus", &["capacity"]),
    ("k8s.io.api.core.v1.PersistentVolumeClaimSpec", &[
        "storageClassName", "volumeMode", "volumeAttributesClassName",
    ]),
    ("k8s.io.api.core.v1.PodCertificateProjection", &["maxExpirationSeconds"]),
    ("k8s.io.api.core.v1.PodDNSConfigOption", &["value"]),
    ("k8s.io.api.core.v1.PodResourceClaim", &["resourceClaimName", "resourceClaimTemplateName"]),
    ("k8s.io.api.core.v1.PodSecurityContext", &[
        "runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "fsGroupChangePolicy",
        "supplementalGroupsPolicy", "seLinuxChangePolicy",
    ]),
    ("k8s.io.api.core.v1.PodSpec", &[
        "terminationGracePeriodSeconds", "activeDeadlineSeconds", "automountServiceAccountToken",
        "shareProcessNamespace", "priority", "runtimeClassName", "enableServiceLinks",
        "preemptionPolicy", "setHostnameAsFQDN", "hostUsers", "hostnameOverride",
    ]),
    ("k8s.io.api.core.v1.PortStatus", &["error"]),
    ("k8s.io.api.core.v1.Probe", &["terminationGracePeriodSeconds"]),
    ("k8s.io.api.core.v1.ProjectedVolumeSource", &["defaultMode"]),
    ("k8s.io.api.core.v1.SeccompProfile", &["localhostProfile"]),
    ("k8s.io.api.core.v1.Secret", &["immutable"]),
    ("k8s.io.api.core.v1.SecretEnvSource", &["optional"]),
    ("k8s.io.api.core.v1.SecretKeySelector", &["optional"]),
    ("k8s.io.api.core.v1.SecretProjection", &["optional"]),
    ("k8s.io.api.core.v1.SecretVolumeSource", &["defaultMode", "optional"]),
    ("k8s.io.api.core.v1.SecurityContext", &[
        "privileged", "runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
        "allowPrivilegeEscalation", "procMount",
    ]),
    ("k8s.io.api.core.v1.ServiceAccountTokenProjection", &["expirationSeconds"]),
    ("k8s.io.api.core.v1.ServicePort", &["appProtocol"]),
    ("k8s.io.api.core.v1.ServiceSpec", &[
        "allocateLoadBalancerNodePorts", "loadBalancerClass", "internalTrafficPolicy",
        "ipFamilyPolicy", "trafficDistribution",
    ]),
    ("k8s.io.api.core.v1.Toleration", &["tolerationSeconds"]),
    ("k8s.io.api.core.v1.TopologySpreadConstraint", &[
        "minDomains", "nodeAffinityPolicy", "nodeTaintsPolicy",
    ]),
    ("k8s.io.api.core.v1.TypedLocalObjectReference", &["apiGroup"]),
    ("k8s.io.api.core.v1.TypedObjectReference", &["apiGroup", "namespace"]),
    ("k8s.io.api.core.v1.VolumeMount", &["mountPropagation", "recursiveReadOnly"]),
    ("k8s.io.api.core.v1.VolumeMountStatus", &["recursiveReadOnly"]),
    ("k8s.io.api.core.v1.WindowsSecurityContextOptions", &[
        "gmsaCredentialSpecName", "gmsaCredentialSpec", "runAsUserName", "hostProcess",
    ]),
    ("k8s.io.api.discovery.v1.Endpoint", &["hostname", "nodeName", "zone"]),
    ("k8s.io.api.discovery.v1.EndpointConditions", &["ready", "serving", "terminating"]),
    ("k8s.io.api.discovery.v1.EndpointPort", &["name", "protocol", "port", "appProtocol"]),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions", &[
        "gracePeriodSeconds", "orphanDependents", "propagationPolicy",
        "ignoreStoreReadErrorWithClusterBreakingPotential",
    ]),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta", &["deletionGracePeriodSeconds"]),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.OwnerReference", &["controller", "blockOwnerDeletion"]),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.Preconditions", &["uid", "resourceVersion"]),
];

/// Regenerates the schema table, writing the file only when its content changes.
pub fn run(workspace_root: &Path) -> Result<()> {
    let text = generate(workspace_root)?;
    let path = workspace_root.join(OUTPUT);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        eprintln!("gen-protobuf: {OUTPUT} is up to date");
        return Ok(());
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("gen-protobuf: wrote {OUTPUT}");
    Ok(())
}

/// Fails when the checked-in table differs from what [`run`] would write.
pub fn check(workspace_root: &Path) -> Result<()> {
    let text = generate(workspace_root)?;
    let path = workspace_root.join(OUTPUT);
    let current = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if current != text {
        bail!("{OUTPUT} is out of date: run `cargo xtask gen-protobuf`");
    }
    Ok(())
}

/// A proto scalar kind, as prost names it in `#[prost(...)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    Bool,
    Int32,
    Int64,
    Double,
    String,
    Bytes,
}

impl Scalar {
    fn from_prost(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => Self::Bool,
            "int32" => Self::Int32,
            "int64" => Self::Int64,
            "double" => Self::Double,
            "string" => Self::String,
            "bytes" => Self::Bytes,
            _ => return None,
        })
    }

    /// The decoder's `Type` variant.
    fn variant(self) -> &'static str {
        match self {
            Self::Bool => "Bool",
            Self::Int32 => "Int32",
            Self::Int64 => "Int64",
            Self::Double => "Double",
            Self::String => "String",
            Self::Bytes => "Bytes",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProtoLabel {
    One,
    Repeated,
    /// `map<string, V>`: entries with key 1 and value 2.
    Map,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ProtoType {
    Scalar(Scalar),
    /// Full proto name, e.g. `k8s.io.api.core.v1.PodSpec`.
    Message(String),
}

#[derive(Clone, Debug)]
struct ProtoField {
    /// prost's field name without `r#`, e.g. `pod_ip`, `type`.
    name: String,
    tag: u32,
    label: ProtoLabel,
    ty: ProtoType,
}

#[derive(Clone, Debug, Default)]
struct ProtoMessage {
    fields: Vec<ProtoField>,
}

fn generate(workspace_root: &Path) -> Result<String> {
    let metadata = cargo_metadata(workspace_root)?;
    let pb = find_package(&metadata, "k8s-pb")?;
    let openapi_pkg = find_package(&metadata, "k8s-openapi")?;
    let mut openapi = OpenApi::new(&metadata, &openapi_pkg)?;
    let mut source = PbSource::new(pb.src.clone());
    let root_names: Vec<&str> = ROOTS.iter().map(|(_, _, proto)| *proto).collect();
    let messages = source.load_reachable(&root_names, &openapi)?;
    check_special_layouts(&messages)?;
    let table = resolve(&messages, &mut openapi)?;
    let roots = roots(&mut source, &table)?;
    render(&pb, &openapi_pkg, &roots, &table)
}

// ---------------------------------------------------------------------------------------------
// cargo metadata

struct Package {
    id: String,
    version: String,
    /// The crate's `src` directory.
    src: PathBuf,
}

fn cargo_metadata(workspace_root: &Path) -> Result<serde_json::Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(workspace_root)
        .output()
        .with_context(|| format!("cannot run {cargo} metadata"))?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")
}

fn find_package(metadata: &serde_json::Value, name: &str) -> Result<Package> {
    let packages = metadata["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata has no packages"))?;
    let found: Vec<&serde_json::Value> = packages
        .iter()
        .filter(|p| p["name"].as_str() == Some(name))
        .collect();
    let [package] = found.as_slice() else {
        bail!(
            "expected exactly one {name} package in cargo metadata, found {} \
             (k8s-pb is a dev-dependency and k8s-openapi a dependency of skiff-controlplane)",
            found.len()
        );
    };
    let manifest = package["manifest_path"]
        .as_str()
        .ok_or_else(|| anyhow!("{name} has no manifest_path"))?;
    let src = Path::new(manifest)
        .parent()
        .ok_or_else(|| anyhow!("{name} manifest_path has no parent"))?
        .join("src");
    Ok(Package {
        id: package["id"].as_str().unwrap_or_default().to_string(),
        version: package["version"].as_str().unwrap_or_default().to_string(),
        src,
    })
}

// ---------------------------------------------------------------------------------------------
// k8s-pb: prost structs, one `mod.rs` per proto package

/// Structs are keyed by normalized name: prost's CamelCase loses initialisms in type names too
/// (`HTTPGetAction` becomes `HttpGetAction`).
struct PbModule {
    messages: HashMap<String, ProtoMessage>,
    /// Normalized struct name -> (apiVersion, kind), from `impl crate::Resource for X`.
    resources: HashMap<String, (String, String)>,
}

struct PbSource {
    src: PathBuf,
    modules: HashMap<String, PbModule>,
}

impl PbSource {
    fn new(src: PathBuf) -> Self {
        Self {
            src,
            modules: HashMap::new(),
        }
    }

    fn module(&mut self, package: &str) -> Result<&PbModule> {
        if !self.modules.contains_key(package) {
            let module = self.parse_module(package)?;
            self.modules.insert(package.to_string(), module);
        }
        self.modules
            .get(package)
            .ok_or_else(|| anyhow!("module {package} vanished"))
    }

    fn message(&mut self, full: &str) -> Result<ProtoMessage> {
        let (package, name) = split_name(full)?;
        self.module(package)?
            .messages
            .get(&normalize(name))
            .cloned()
            .ok_or_else(|| anyhow!("k8s-pb has no message {full}"))
    }

    fn resource(&mut self, full: &str) -> Result<Option<(String, String)>> {
        let (package, name) = split_name(full)?;
        Ok(self
            .module(package)?
            .resources
            .get(&normalize(name))
            .cloned())
    }

    /// Every message reachable from `roots` under its real proto name, special types included
    /// (as leaves).
    fn load_reachable(
        &mut self,
        roots: &[&str],
        openapi: &OpenApi,
    ) -> Result<BTreeMap<String, ProtoMessage>> {
        let mut out = BTreeMap::new();
        let mut queue: VecDeque<String> = roots.iter().map(|r| (*r).to_string()).collect();
        while let Some(name) = queue.pop_front() {
            if out.contains_key(&name) {
                continue;
            }
            let mut message = self.message(&name)?;
            for field in &mut message.fields {
                if let ProtoType::Message(child) = &mut field.ty {
                    *child = openapi.proto_name(child)?;
                    if special(&name).is_none() {
                        queue.push_back(child.clone());
                    }
                }
            }
            out.insert(name, message);
        }
        Ok(out)
    }

    fn parse_module(&self, package: &str) -> Result<PbModule> {
        let segments = package_segments(package)?;
        let mut path = self.src.clone();
        path.extend(&segments);
        path.push("mod.rs");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file =
            syn::parse_file(&text).with_context(|| format!("cannot parse {}", path.display()))?;
        let mut module = PbModule {
            messages: HashMap::new(),
            resources: HashMap::new(),
        };
        for item in &file.items {
            match item {
                syn::Item::Struct(item) if derives_prost_message(item) => {
                    let message = parse_struct(item, &segments).with_context(|| {
                        format!("in {package}.{} ({})", item.ident, path.display())
                    })?;
                    module
                        .messages
                        .insert(normalize(&item.ident.to_string()), message);
                }
                syn::Item::Impl(item) => {
                    if let Some((name, api_version, kind)) = resource_impl(item) {
                        module
                            .resources
                            .insert(normalize(&name), (api_version, kind));
                    }
                }
                _ => {}
            }
        }
        Ok(module)
    }
}

/// `k8s.io.api.core.v1.Pod` -> (`k8s.io.api.core.v1`, `Pod`).
fn split_name(full: &str) -> Result<(&str, &str)> {
    full.rsplit_once('.')
        .ok_or_else(|| anyhow!("{full} is not a qualified proto name"))
}

/// `k8s.io.api.core.v1` -> [`api`, `core`, `v1`], the module path in k8s-pb.
fn package_segments(package: &str) -> Result<Vec<String>> {
    let rest = package
        .strip_prefix("k8s.io.")
        .ok_or_else(|| anyhow!("{package} is not a k8s.io package"))?;
    Ok(rest.split('.').map(str::to_string).collect())
}

fn derives_prost_message(item: &syn::ItemStruct) -> bool {
    item.attrs.iter().any(|attr| {
        attr.path().is_ident("derive")
            && attr
                .parse_args_with(
                    syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
                )
                .is_ok_and(|paths| {
                    paths
                        .iter()
                        .any(|p| p.segments.last().is_some_and(|s| s.ident == "Message"))
                })
    })
}

fn parse_struct(item: &syn::ItemStruct, module: &[String]) -> Result<ProtoMessage> {
    let mut fields = Vec::new();
    for field in &item.fields {
        let ident = field
            .ident
            .as_ref()
            .ok_or_else(|| anyhow!("tuple struct"))?;
        let name = ident.to_string().trim_start_matches("r#").to_string();
        let attr = field
            .attrs
            .iter()
            .find(|a| a.path().is_ident("prost"))
            .ok_or_else(|| anyhow!("field {name} has no #[prost] attribute"))?;
        let parsed = parse_prost_attr(attr).with_context(|| format!("field {name}"))?;
        let ty = match parsed.kind.as_str() {
            "message" => ProtoType::Message(message_type(&field.ty, module)?),
            other => ProtoType::Scalar(
                Scalar::from_prost(other)
                    .ok_or_else(|| anyhow!("field {name}: unsupported prost kind {other}"))?,
            ),
        };
        fields.push(ProtoField {
            name,
            tag: parsed.tag,
            label: parsed.label,
            ty,
        });
    }
    fields.sort_by_key(|f| f.tag);
    Ok(ProtoMessage { fields })
}

struct ProstAttr {
    /// `message`, or a scalar name; for maps, the value's kind.
    kind: String,
    label: ProtoLabel,
    tag: u32,
}

/// Parses `#[prost(int32, optional, tag = "3")]`, `#[prost(btree_map = "string, message",
/// tag = "2")]` and the like. Anything the decoder cannot handle (enumerations, oneofs, other
/// scalar kinds, non-string map keys) fails generation instead of being guessed at.
fn parse_prost_attr(attr: &syn::Attribute) -> Result<ProstAttr> {
    let mut kind = None;
    let mut label = ProtoLabel::One;
    let mut tag = None;
    attr.parse_nested_meta(|meta| {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let value = if meta.input.peek(syn::Token![=]) {
            Some(meta.value()?.parse::<syn::LitStr>()?.value())
        } else {
            None
        };
        match key.as_str() {
            // Presence and boxing do not change the wire format; the decoder accepts packed
            // and unpacked repeated scalars alike.
            "optional" | "required" | "boxed" | "packed" => {}
            "repeated" => label = ProtoLabel::Repeated,
            "tag" => tag = value,
            "btree_map" | "hash_map" | "map" => {
                let spec = value.unwrap_or_default();
                let (key_kind, value_kind) = spec
                    .split_once(',')
                    .ok_or_else(|| meta.error(format!("bad map spec {spec:?}")))?;
                if key_kind.trim() != "string" {
                    return Err(meta.error(format!("map key {key_kind:?} is not string")));
                }
                label = ProtoLabel::Map;
                kind = Some(value_kind.trim().to_string());
            }
            other => {
                if kind.is_some() {
                    return Err(meta.error(format!("second kind {other}")));
                }
                kind = Some(other.to_string());
            }
        }
        Ok(())
    })?;
    let tag = tag
        .ok_or_else(|| anyhow!("no tag"))?
        .parse()
        .context("bad tag")?;
    let kind = kind.ok_or_else(|| anyhow!("no kind"))?;
    Ok(ProstAttr { kind, label, tag })
}

/// The message type of a field: the innermost type argument of `Option<..>`, `Vec<..>`,
/// `Box<..>` or the value of `BTreeMap<String, ..>`, resolved against the module path.
fn message_type(ty: &syn::Type, module: &[String]) -> Result<String> {
    let path = innermost_path(ty).ok_or_else(|| anyhow!("cannot find the message type"))?;
    if path.leading_colon.is_some() {
        bail!("message type path is absolute");
    }
    let mut resolved: Vec<String> = module.to_vec();
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let (name, prefix) = segments
        .split_last()
        .ok_or_else(|| anyhow!("empty type path"))?;
    for segment in prefix {
        match segment.as_str() {
            "super" => {
                resolved
                    .pop()
                    .ok_or_else(|| anyhow!("`super` above the crate root"))?;
            }
            "crate" => resolved.clear(),
            "self" => {}
            other => resolved.push(other.to_string()),
        }
    }
    Ok(format!("k8s.io.{}.{name}", resolved.join(".")))
}

fn innermost_path(ty: &syn::Type) -> Option<&syn::Path> {
    let syn::Type::Path(type_path) = ty else {
        return None;
    };
    let last = type_path.path.segments.last()?;
    if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
        let inner = args.args.iter().rev().find_map(|arg| match arg {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        })?;
        return innermost_path(inner);
    }
    Some(&type_path.path)
}

/// `impl crate::Resource for X { const API_VERSION = ".."; const KIND = ".."; .. }`.
fn resource_impl(item: &syn::ItemImpl) -> Option<(String, String, String)> {
    let (_, trait_path, _) = item.trait_.as_ref()?;
    if trait_path.segments.last()?.ident != "Resource" {
        return None;
    }
    let syn::Type::Path(self_ty) = item.self_ty.as_ref() else {
        return None;
    };
    let name = self_ty.path.segments.last()?.ident.to_string();
    let constant = |wanted: &str| {
        item.items.iter().find_map(|impl_item| match impl_item {
            syn::ImplItem::Const(c) if c.ident == wanted => match &c.expr {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
    };
    Some((name, constant("API_VERSION")?, constant("KIND")?))
}

fn special(name: &str) -> Option<&'static Special> {
    SPECIAL.iter().find(|special| special.proto == name)
}

/// The decoder hard-codes the field layout of the special types; make sure k8s-pb agrees.
fn check_special_layouts(messages: &BTreeMap<String, ProtoMessage>) -> Result<()> {
    for (name, message) in messages {
        let Some(Special { layout, .. }) = special(name) else {
            continue;
        };
        let actual: Vec<(u32, Scalar)> = message
            .fields
            .iter()
            .map(|f| match (&f.ty, f.label) {
                (ProtoType::Scalar(s), ProtoLabel::One) => Ok((f.tag, *s)),
                _ => Err(anyhow!("{name}.{} is not a singular scalar", f.name)),
            })
            .collect::<Result<_>>()?;
        if actual != *layout {
            bail!("{name} has layout {actual:?}, the decoder expects {layout:?}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// k8s-openapi: JSON names and required-ness per definition

/// One property of an OpenAPI definition.
#[derive(Clone, Debug)]
struct Property {
    json: String,
    required: bool,
}

/// Normalized name (lowercase, no `_`/`-`) -> property.
type Properties = BTreeMap<String, Property>;

struct OpenApi {
    /// Per version directory (the enabled feature first, then newest to oldest):
    /// definition name -> file.
    versions: Vec<HashMap<String, PathBuf>>,
    /// `io.k8s.api.core.v1.` + normalized type name -> real definition name, for undoing
    /// prost's renaming of types.
    names: HashMap<String, String>,
    /// Definition name -> properties merged over all versions, earlier versions winning.
    cache: HashMap<String, Option<Properties>>,
}

impl OpenApi {
    fn new(metadata: &serde_json::Value, package: &Package) -> Result<Self> {
        let mut dirs: Vec<(u32, String)> = std::fs::read_dir(&package.src)
            .with_context(|| format!("cannot list {}", package.src.display()))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let minor = name.strip_prefix("v1_")?.parse().ok()?;
                Some((minor, name))
            })
            .collect();
        if dirs.is_empty() {
            bail!("no v1_* directories in {}", package.src.display());
        }
        // Newer versions only add properties; their names resolve fields k8s-pb has that the
        // enabled version lacks.
        dirs.sort_by_key(|(minor, _)| std::cmp::Reverse(*minor));
        let enabled = enabled_openapi_version(metadata, package)?;
        dirs.sort_by_key(|(_, name)| *name != enabled);
        let mut versions = Vec::new();
        for (_, dir) in &dirs {
            versions.push(index_definitions(&package.src.join(dir))?);
        }
        let mut names: HashMap<String, String> = HashMap::new();
        for definition in versions.iter().flat_map(HashMap::keys) {
            let (package, name) = split_name(definition)?;
            let key = format!("{package}.{}", normalize(name));
            if let Some(previous) = names.insert(key, definition.clone())
                && previous != *definition
            {
                bail!("k8s-openapi definitions {previous} and {definition} differ only in case");
            }
        }
        Ok(Self {
            versions,
            names,
            cache: HashMap::new(),
        })
    }

    /// The real proto name of a k8s-pb struct, e.g. `k8s.io.api.core.v1.HttpGetAction` ->
    /// `k8s.io.api.core.v1.HTTPGetAction`; unchanged when k8s-openapi has no such type.
    fn proto_name(&self, pb_name: &str) -> Result<String> {
        let definition = definition_name(pb_name)?;
        let (package, name) = split_name(&definition)?;
        let Some(real) = self.names.get(&format!("{package}.{}", normalize(name))) else {
            return Ok(pb_name.to_string());
        };
        let (_, real_name) = split_name(real)?;
        let (pb_package, _) = split_name(pb_name)?;
        Ok(format!("{pb_package}.{real_name}"))
    }

    /// Properties of the definition matching a proto message, if k8s-openapi has one.
    fn properties(&mut self, proto_name: &str) -> Result<Option<&Properties>> {
        let definition = definition_name(proto_name)?;
        if !self.cache.contains_key(&definition) {
            let mut merged: Option<Properties> = None;
            for version in &self.versions {
                let Some(path) = version.get(&definition) else {
                    continue;
                };
                let props = parse_definition(path, &definition)?;
                let target = merged.get_or_insert_with(BTreeMap::new);
                for (key, prop) in props {
                    target.entry(key).or_insert(prop);
                }
            }
            self.cache.insert(definition.clone(), merged);
        }
        Ok(self.cache.get(&definition).and_then(Option::as_ref))
    }
}

/// The `v1_*` feature the workspace enables on k8s-openapi.
fn enabled_openapi_version(metadata: &serde_json::Value, package: &Package) -> Result<String> {
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata has no resolve graph"))?;
    let node = nodes
        .iter()
        .find(|n| n["id"].as_str() == Some(package.id.as_str()))
        .ok_or_else(|| anyhow!("k8s-openapi is not in the resolve graph"))?;
    node["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .find(|f| f.starts_with("v1_"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no v1_* feature enabled on k8s-openapi"))
}

/// Maps each definition name to its file, from the `// Generated from definition X` header.
fn index_definitions(dir: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut out = HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let first = text.lines().next().unwrap_or_default();
                if let Some(definition) = first.strip_prefix("// Generated from definition ") {
                    out.insert(definition.trim().to_string(), path);
                }
            }
        }
    }
    Ok(out)
}

/// `k8s.io.api.core.v1.Pod` -> `io.k8s.api.core.v1.Pod`; k8s-pb module names use `_` where
/// Go import paths (and so the OpenAPI names) use `-`.
fn definition_name(proto_name: &str) -> Result<String> {
    let (package, name) = split_name(proto_name)?;
    let segments = package_segments(package)?;
    Ok(format!(
        "io.k8s.{}.{name}",
        segments.join(".").replace('_', "-")
    ))
}

/// Reads a k8s-openapi type: JSON names from the `"podIP" => Field::Key_pod_ip` arms of its
/// Deserialize impl, required-ness from whether the struct field is an `Option`.
fn parse_definition(path: &Path, definition: &str) -> Result<Properties> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file =
        syn::parse_file(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    let type_name = definition.rsplit('.').next().unwrap_or_default();
    let mut collector = DefinitionCollector {
        type_name,
        optional: HashMap::new(),
        arms: Vec::new(),
    };
    collector.visit_file(&file);
    let mut out = Properties::new();
    for (json, rust) in collector.arms {
        // Properties that are not struct fields (apiVersion, kind) are never required.
        let required = collector
            .optional
            .get(&rust)
            .is_some_and(|optional| !optional);
        let key = normalize(&json);
        if let Some(previous) = out.get(&key) {
            bail!(
                "{definition}: {json} and {} normalize to the same name",
                previous.json
            );
        }
        out.insert(key, Property { json, required });
    }
    Ok(out)
}

struct DefinitionCollector<'a> {
    type_name: &'a str,
    /// Struct field -> is `Option<..>`.
    optional: HashMap<String, bool>,
    /// (JSON name, struct field) from the Deserialize field visitor.
    arms: Vec<(String, String)>,
}

impl<'ast> Visit<'ast> for DefinitionCollector<'_> {
    fn visit_item_struct(&mut self, item: &'ast syn::ItemStruct) {
        if item.ident == self.type_name {
            for field in &item.fields {
                let Some(ident) = &field.ident else { continue };
                let optional = matches!(&field.ty, syn::Type::Path(p)
                    if p.path.segments.last().is_some_and(|s| s.ident == "Option"));
                self.optional.insert(
                    ident.to_string().trim_start_matches("r#").to_string(),
                    optional,
                );
            }
        }
        syn::visit::visit_item_struct(self, item);
    }

    fn visit_arm(&mut self, arm: &'ast syn::Arm) {
        if let (syn::Pat::Lit(lit), syn::Expr::Path(body)) = (&arm.pat, arm.body.as_ref())
            && let syn::Lit::Str(json) = &lit.lit
            && let Some(last) = body.path.segments.last()
            && let Some(rust) = last.ident.to_string().strip_prefix("Key_")
        {
            self.arms.push((json.value(), rust.to_string()));
        }
        syn::visit::visit_arm(self, arm);
    }
}

/// Compares proto and JSON names: `pod_ip` and `podIP` both become `podip`.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `pod_ip` -> `podIp`: the last resort when k8s-openapi has no matching property.
fn lower_camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Resolution into the output table

#[derive(Clone, Debug, PartialEq, Eq)]
enum OutLabel {
    One,
    Repeated,
    Map,
    /// A Go struct embedded with `json:",inline"`: the proto nests it, the JSON flattens it.
    Inline,
}

#[derive(Clone, Debug)]
struct OutField {
    tag: u32,
    json: String,
    /// Rendered `Type` variant, e.g. `Int32`, `Quantity`, `Msg(12)`; `Msg` is filled in
    /// during rendering from `message`.
    variant: Option<&'static str>,
    message: Option<String>,
    label: OutLabel,
    keep_zero: bool,
}

type Table = BTreeMap<String, Vec<OutField>>;

fn resolve(messages: &BTreeMap<String, ProtoMessage>, openapi: &mut OpenApi) -> Result<Table> {
    let plain: Vec<(&String, &ProtoMessage)> = messages
        .iter()
        .filter(|(name, _)| special(name).is_none())
        .collect();

    // Embedded Go structs: a singular message field with no JSON property of its own whose
    // fields are all properties of the parent. An embedded struct without an OpenAPI
    // definition (ProbeHandler, VolumeSource) takes its names from the parent's definition.
    let mut inline: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut borrowed: HashMap<String, Properties> = HashMap::new();
    loop {
        let mut changed = false;
        for (name, message) in &plain {
            let Some(props) = properties_of(openapi, &borrowed, name)? else {
                continue;
            };
            for field in &message.fields {
                let ProtoType::Message(child) = &field.ty else {
                    continue;
                };
                if field.label != ProtoLabel::One
                    || special(child).is_some()
                    || props.contains_key(&normalize(&field.name))
                    || inline.contains(&((*name).clone(), field.tag))
                {
                    continue;
                }
                let child_message = messages
                    .get(child)
                    .ok_or_else(|| anyhow!("{child} not loaded"))?;
                if child_message
                    .fields
                    .iter()
                    .all(|f| props.contains_key(&normalize(&f.name)))
                {
                    inline.insert(((*name).clone(), field.tag));
                    if openapi.properties(child)?.is_none() {
                        borrowed.insert(child.clone(), props.clone());
                    }
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }

    let mut table = Table::new();
    let mut unresolved = Vec::new();
    for (name, message) in &plain {
        let props = properties_of(openapi, &borrowed, name)?;
        let mut fields = Vec::new();
        for field in &message.fields {
            let (variant, child) = match &field.ty {
                ProtoType::Scalar(s) => (Some(s.variant()), None),
                ProtoType::Message(m) => match special(m) {
                    Some(special) => (Some(special.variant), None),
                    None => (None, Some(m.clone())),
                },
            };
            let is_inline = inline.contains(&((*name).clone(), field.tag));
            let property = props
                .as_ref()
                .and_then(|p| p.get(&normalize(&field.name)))
                .cloned();
            let json = match (&property, is_inline) {
                (Some(p), _) => p.json.clone(),
                // Not a JSON name: the decoder merges inline fields into the parent object.
                (None, true) => lower_camel(&field.name),
                (None, false) => {
                    unresolved.push(format!("{name}.{}", field.name));
                    lower_camel(&field.name)
                }
            };
            let label = match (field.label, is_inline) {
                (_, true) => OutLabel::Inline,
                (ProtoLabel::One, false) => OutLabel::One,
                (ProtoLabel::Repeated, false) => OutLabel::Repeated,
                (ProtoLabel::Map, false) => OutLabel::Map,
            };
            fields.push(OutField {
                tag: field.tag,
                json,
                variant,
                message: child,
                label,
                keep_zero: property.is_some_and(|p| p.required) && zeroable(variant),
            });
        }
        table.insert((*name).clone(), fields);
    }
    if !unresolved.is_empty() {
        bail!(
            "k8s-openapi has no JSON name for these k8s-pb fields (update k8s-openapi, or teach \
             the generator about them): {}",
            unresolved.join(", ")
        );
    }

    for (message, names) in KEEP_ZERO {
        let fields = table
            .get_mut(*message)
            .ok_or_else(|| anyhow!("KEEP_ZERO names {message}, which is not in the table"))?;
        for json in *names {
            let field = fields
                .iter_mut()
                .find(|f| f.json == *json && f.label != OutLabel::Inline)
                .ok_or_else(|| anyhow!("KEEP_ZERO names {message}.{json}, which does not exist"))?;
            if field.label != OutLabel::One || !zeroable(field.variant) {
                bail!("KEEP_ZERO names {message}.{json}, which is not a singular scalar");
            }
            field.keep_zero = true;
        }
    }
    Ok(table)
}

/// Types whose zero value the decoder drops unless the field keeps zeros.
fn zeroable(variant: Option<&str>) -> bool {
    matches!(
        variant,
        Some("Bool" | "Int32" | "Int64" | "Double" | "String" | "Bytes" | "IntOrString")
    )
}

fn properties_of(
    openapi: &mut OpenApi,
    borrowed: &HashMap<String, Properties>,
    name: &str,
) -> Result<Option<Properties>> {
    if let Some(props) = openapi.properties(name)? {
        return Ok(Some(props.clone()));
    }
    Ok(borrowed.get(name).cloned())
}

/// (apiVersion, kind, proto name) for each root, sorted.
fn roots(source: &mut PbSource, table: &Table) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for (api_version, kind, proto) in ROOTS {
        if !table.contains_key(*proto) {
            bail!("root {proto} is not in the table");
        }
        if let Some((pb_version, pb_kind)) = source.resource(proto)?
            && (pb_version != *api_version || pb_kind != *kind)
        {
            bail!("ROOTS says {proto} is {api_version} {kind}, k8s-pb says {pb_version} {pb_kind}");
        }
        out.push((api_version.to_string(), kind.to_string(), proto.to_string()));
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Output

fn render(
    pb: &Package,
    openapi: &Package,
    roots: &[(String, String, String)],
    table: &Table,
) -> Result<String> {
    if table.len() > usize::from(u16::MAX) {
        bail!(
            "{} messages do not fit the decoder's u16 indexes",
            table.len()
        );
    }
    let index: HashMap<&str, usize> = table
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let index_of = |name: &str| {
        index
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("{name} is referenced but not in the table"))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// @generated by `cargo xtask gen-protobuf` from k8s-pb {} (wire layout) and\n\
         // k8s-openapi {} (JSON names). Do not edit: change xtask/src/gen_protobuf.rs and\n\
         // regenerate.\n",
        pb.version, openapi.version
    );
    out.push_str("use super::{Field, Label::*, Message, Root, Type::*};\n\n");
    out.push_str(
        "/// Kinds accepted at the top level, sorted by (apiVersion, kind). An empty apiVersion\n\
         /// matches any: meta/v1 options are registered in every group version.\n",
    );
    out.push_str("pub static ROOTS: &[Root] = &[\n");
    for (api_version, kind, proto) in roots {
        let _ = writeln!(
            out,
            "    Root {{ api_version: {api_version:?}, kind: {kind:?}, message: {} }},",
            index_of(proto)?
        );
    }
    out.push_str("];\n\n");
    out.push_str(
        "/// Messages sorted by proto name; `Msg(i)` is `MESSAGES[i]`. Fields are sorted by tag.\n",
    );
    out.push_str("pub static MESSAGES: &[Message] = &[\n");
    for (i, (name, fields)) in table.iter().enumerate() {
        let _ = writeln!(out, "    /* {i} */ Message {{ name: {name:?}, fields: &[");
        for field in fields {
            let ty = match (&field.message, field.variant) {
                (Some(child), _) => format!("Msg({})", index_of(child)?),
                (None, Some(variant)) => variant.to_string(),
                (None, None) => bail!("{name} field {} has no type", field.tag),
            };
            let label = match field.label {
                OutLabel::One => "One",
                OutLabel::Repeated => "Repeated",
                OutLabel::Map => "Map",
                OutLabel::Inline => "Inline",
            };
            let _ = writeln!(
                out,
                "        Field {{ tag: {}, name: {:?}, ty: {ty}, label: {label}, keep_zero: {} }},",
                field.tag, field.json, field.keep_zero
            );
        }
        out.push_str("    ] },\n");
    }
    out.push_str("];\n");
    Ok(out)
}
