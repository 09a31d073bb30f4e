//! Pod volumes as host directories bind-mounted into the app containers: emptyDir (a directory
//! per pod uid and volume under the data dir, removed with the pod), hostPath (with Kubernetes'
//! type checks), configMap and secret (files projected from the object, re-projected when it
//! changes). Projected volumes use the kubelet's layout so updates are atomic inside a running
//! container: the files are links `key -> ..data/key`, and `..data` links to a timestamped
//! directory that a new projection replaces with one rename.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret, Volume};

/// How often a running pod's configMap and secret volumes are re-read from the API.
const REFRESH: Duration = Duration::from_secs(5);
const DATA: &str = "..data";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume \"{volume}\": {why}")]
    SetUp { volume: String, why: String },
    #[error(
        "volume \"{0}\" has a type skiff does not support (supported: emptyDir, hostPath, configMap, secret)"
    )]
    Unsupported(String),
    #[error("container {container}: volumeMount \"{volume}\" names no volume of the pod")]
    NoSuchVolume { container: String, volume: String },
    #[error("container {container}: subPath {sub:?} must be a relative path without '..'")]
    BadSubPath { container: String, sub: String },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_owned(),
        source,
    }
}

fn setup(volume: &str, why: impl Into<String>) -> VolumeError {
    VolumeError::SetUp {
        volume: volume.to_owned(),
        why: why.into(),
    }
}

/// A prepared volume: where it is on the host and whether containers must see it read-only.
#[derive(Clone, Debug)]
pub struct HostVolume {
    pub path: PathBuf,
    pub always_read_only: bool,
}

/// One bind mount of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

pub struct Volumes {
    client: kube::Client,
    /// `DATA_DIR/pods`: one directory per pod uid.
    root: PathBuf,
    refreshed: std::sync::Mutex<HashMap<String, Instant>>,
}

/// A relative path with no `..` (item paths, subPaths).
pub fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The files of a configMap or secret volume: (path, contents, mode).
pub fn project(
    volume: &str,
    what: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Vec<(String, Vec<u8>, u32)>, VolumeError> {
    let mode = |m: Option<i32>| (m.or(default_mode).unwrap_or(0o644) & 0o777) as u32;
    let Some(items) = items else {
        return Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), mode(None)))
            .collect());
    };
    let mut out = Vec::new();
    for it in items {
        if !safe_relative(&it.path) {
            return Err(setup(
                volume,
                format!("item path {:?} must be relative and without '..'", it.path),
            ));
        }
        match data.get(&it.key) {
            Some(v) => out.push((it.path.clone(), v.clone(), mode(it.mode))),
            None if optional => {}
            None => {
                return Err(setup(
                    volume,
                    format!("{what} references non-existent config key: {}", it.key),
                ));
            }
        }
    }
    Ok(out)
}

/// Writes `files` into `dir` in the kubelet's atomic layout; nothing is written when the
/// current projection already holds the same files.
pub fn write_projection(dir: &Path, files: &[(String, Vec<u8>, u32)]) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let current = dir.join(DATA);
    let same = current.is_dir()
        && files.iter().all(|(p, bytes, mode)| {
            let f = current.join(p);
            std::fs::read(&f).is_ok_and(|b| b == *bytes)
                && std::fs::metadata(&f).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode)
        })
        && count_files(&current) == files.len();
    if same {
        return Ok(());
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh).map_err(io(&fresh))?;
    for (p, bytes, mode) in files {
        let f = fresh.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&f, bytes).map_err(io(&f))?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).map_err(io(&f))?;
    }
    let old = std::fs::read_link(&current).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &current).map_err(io(&current))?;
    // Top-level names link through ..data; names no longer projected go.
    let tops: HashSet<String> = files
        .iter()
        .filter_map(|(p, _, _)| {
            Path::new(p)
                .components()
                .find(|c| matches!(c, Component::Normal(_)))
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
        })
        .collect();
    for t in &tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA).join(t), &link).map_err(io(&link))?;
        }
    }
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Kubernetes' hostPath type checks (and creation for the *OrCreate types).
pub fn check_host_path(volume: &str, path: &Path, ty: &str) -> Result<(), VolumeError> {
    let meta = std::fs::metadata(path);
    let fail = |what: &str| {
        Err(setup(
            volume,
            format!(
                "hostPath type check failed: {} is not {what}",
                path.display()
            ),
        ))
    };
    match ty {
        "" => Ok(()),
        "DirectoryOrCreate" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => fail("a directory"),
            Err(_) => {
                std::fs::create_dir_all(path).map_err(io(path))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(path))
            }
        },
        "FileOrCreate" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => fail("a file"),
            Err(_) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io(path))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                    .map_err(io(path))
            }
        },
        "Directory" if meta.as_ref().is_ok_and(|m| m.is_dir()) => Ok(()),
        "Directory" => fail("a directory"),
        "File" if meta.as_ref().is_ok_and(|m| m.is_file()) => Ok(()),
        "File" => fail("a file"),
        "Socket" if meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) => Ok(()),
        "Socket" => fail("a socket file"),
        "CharDevice" if meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) => Ok(()),
        "CharDevice" => fail("a character device"),
        "BlockDevice" if meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) => Ok(()),
        "BlockDevice" => fail("a block device"),
        other => Err(setup(
            volume,
            format!(
                "hostPath type {other:?} is not one of DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice"
            ),
        )),
    }
}

/// The bind mounts of one container from its volumeMounts.
pub fn binds(
    c: &Container,
    volumes: &HashMap<String, HostVolume>,
) -> Result<Vec<Bind>, VolumeError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .get(&m.name)
            .ok_or_else(|| VolumeError::NoSuchVolume {
                container: c.name.clone(),
                volume: m.name.clone(),
            })?;
        let mut source = v.path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if !safe_relative(sub) {
                return Err(VolumeError::BadSubPath {
                    container: c.name.clone(),
                    sub: sub.to_owned(),
                });
            }
            source = source.join(sub);
            // The kubelet creates a missing subPath as a directory.
            if !v.always_read_only && std::fs::symlink_metadata(&source).is_err() {
                std::fs::create_dir_all(&source).map_err(io(&source))?;
            }
        }
        out.push(Bind {
            source,
            target: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false) || v.always_read_only,
        });
    }
    Ok(out)
}

impl Volumes {
    pub fn new(client: kube::Client, data_dir: &Path) -> Self {
        Self {
            client,
            root: data_dir.join("pods"),
            refreshed: Default::default(),
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid)
    }

    /// Prepares every volume of `pod` and returns them by name. configMap and secret volumes
    /// are re-read at most every `REFRESH` unless `force` (a container is about to start).
    pub async fn prepare(
        &self,
        pod: &Pod,
        force: bool,
    ) -> Result<HashMap<String, HostVolume>, VolumeError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let refresh = force || {
            let last = self
                .refreshed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(uid)
                .copied();
            last.is_none_or(|t| t.elapsed() >= REFRESH)
        };
        let mut out = HashMap::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let hv = self.prepare_one(uid, ns, v, refresh).await?;
            out.insert(v.name.clone(), hv);
        }
        if refresh {
            self.refreshed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid.to_owned(), Instant::now());
        }
        Ok(out)
    }

    async fn prepare_one(
        &self,
        uid: &str,
        ns: &str,
        v: &Volume,
        refresh: bool,
    ) -> Result<HostVolume, VolumeError> {
        let dir = |kind: &str| self.pod_dir(uid).join("volumes").join(kind).join(&v.name);
        if let Some(e) = &v.empty_dir {
            if e.medium.as_deref() == Some("Memory") {
                tracing::debug!(
                    volume = v.name,
                    "emptyDir medium Memory is served from disk"
                );
            }
            let d = dir("empty-dir");
            if !d.is_dir() {
                std::fs::create_dir_all(&d).map_err(io(&d))?;
                // As the kubelet: any user of the pod may write there.
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))
                    .map_err(io(&d))?;
            }
            return Ok(HostVolume {
                path: d,
                always_read_only: false,
            });
        }
        if let Some(h) = &v.host_path {
            let path = PathBuf::from(&h.path);
            if !path.is_absolute() {
                return Err(setup(
                    &v.name,
                    format!("hostPath {:?} must be an absolute path", h.path),
                ));
            }
            check_host_path(&v.name, &path, h.type_.as_deref().unwrap_or(""))?;
            return Ok(HostVolume {
                path,
                always_read_only: false,
            });
        }
        if v.config_map.is_some() || v.secret.is_some() {
            return self
                .projection(ns, v, &self.pod_dir(uid).join("volumes"), refresh)
                .await;
        }
        Err(VolumeError::Unsupported(v.name.clone()))
    }

    /// A configMap or secret volume: the object's data projected under `base`, read again
    /// when `refresh` says so (or when nothing was projected yet).
    async fn projection(
        &self,
        ns: &str,
        v: &Volume,
        base: &Path,
        refresh: bool,
    ) -> Result<HostVolume, VolumeError> {
        let (kind, field, name, items, mode, optional) = match (&v.config_map, &v.secret) {
            (Some(cm), _) => (
                "configmap",
                "configMap",
                cm.name.clone(),
                cm.items.as_deref(),
                cm.default_mode,
                cm.optional,
            ),
            (None, Some(s)) => (
                "secret",
                "secret",
                s.secret_name.clone().unwrap_or_default(),
                s.items.as_deref(),
                s.default_mode,
                s.optional,
            ),
            (None, None) => return Err(VolumeError::Unsupported(v.name.clone())),
        };
        let d = base.join(kind).join(&v.name);
        if refresh || !d.join(DATA).exists() {
            let optional = optional.unwrap_or(false);
            let found = if kind == "configmap" {
                self.configmap_data(ns, &name).await
            } else {
                self.secret_data(ns, &name).await
            }
            .map_err(|e| setup(&v.name, format!("reading {kind} \"{name}\": {e}")))?;
            let data = match found {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => return Err(setup(&v.name, format!("{kind} \"{name}\" not found"))),
            };
            let files = project(&v.name, field, &data, items, mode, optional)?;
            write_projection(&d, &files)?;
        }
        Ok(HostVolume {
            path: d,
            always_read_only: true,
        })
    }

    /// A ConfigMap's `data` and `binaryData` as bytes (None: no such ConfigMap).
    async fn configmap_data(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.map(|o| {
            o.data
                .into_iter()
                .flatten()
                .map(|(k, s)| (k, s.into_bytes()))
                .chain(o.binary_data.into_iter().flatten().map(|(k, b)| (k, b.0)))
                .collect()
        }))
    }

    /// A Secret's `stringData` and `data` as bytes (None: no such Secret).
    async fn secret_data(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
        let api: kube::Api<Secret> = kube::Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.map(|o| {
            o.string_data
                .into_iter()
                .flatten()
                .map(|(k, s)| (k, s.into_bytes()))
                .chain(o.data.into_iter().flatten().map(|(k, b)| (k, b.0)))
                .collect()
        }))
    }

    /// Removes everything kept for pod `uid` (its emptyDirs and projections).
    pub fn remove(&self, uid: &str) {
        self.refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        let dir = self.pod_dir(uid);
        if uid.is_empty() || !dir.exists() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(
                "removing the volumes of pod {uid} in {}: {e}",
                dir.display()
            );
        }
    }

    /// Pod uids that have a directory here.
    pub fn held(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        }
    }

    #[test]
    fn projections_follow_items_modes_and_optional() {
        let data = BTreeMap::from([("a".to_owned(), b"1".to_vec()), ("b".into(), b"2".to_vec())]);
        let all = project("v", "configMap", &data, None, Some(0o400), false).unwrap();
        assert_eq!(
            all,
            vec![
                ("a".into(), b"1".to_vec(), 0o400),
                ("b".into(), b"2".to_vec(), 0o400)
            ]
        );
        let items = [item("b", "sub/x", Some(0o600)), item("a", "y", None)];
        let some = project("v", "configMap", &data, Some(&items), None, false).unwrap();
        assert_eq!(
            some,
            vec![
                ("sub/x".into(), b"2".to_vec(), 0o600),
                ("y".into(), b"1".to_vec(), 0o644)
            ]
        );
        let missing = [item("zz", "z", None)];
        let e = project("v", "configMap", &data, Some(&missing), None, false).unwrap_err();
        assert!(e.to_string().contains("non-existent config key: zz"), "{e}");
        assert!(
            project("v", "configMap", &data, Some(&missing), None, true)
                .unwrap()
                .is_empty()
        );
        let escape = [item("a", "../x", None)];
        assert!(project("v", "secret", &data, Some(&escape), None, false).is_err());
    }

    #[test]
    fn relative_paths_only() {
        assert!(safe_relative("a/b"));
        assert!(!safe_relative("/etc"));
        assert!(!safe_relative("a/../../b"));
        assert!(!safe_relative(""));
    }

    #[test]
    fn projections_swap_atomically_and_drop_stale_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("cm");
        write_projection(&d, &[("k".into(), b"one".to_vec(), 0o644)]).unwrap();
        assert_eq!(std::fs::read(d.join("k")).unwrap(), b"one");
        let first = std::fs::read_link(d.join(DATA)).unwrap();
        // Unchanged: no new generation.
        write_projection(&d, &[("k".into(), b"one".to_vec(), 0o644)]).unwrap();
        assert_eq!(std::fs::read_link(d.join(DATA)).unwrap(), first);
        write_projection(&d, &[("j".into(), b"two".to_vec(), 0o600)]).unwrap();
        assert_eq!(std::fs::read(d.join("j")).unwrap(), b"two");
        assert!(std::fs::symlink_metadata(d.join("k")).is_err());
        assert!(!d.join(first).exists());
        assert_eq!(
            std::fs::metadata(d.join("j")).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn host_path_types_are_checked_as_kubernetes_does() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(check_host_path("v", dir.path(), "Directory").is_ok());
        assert!(check_host_path("v", &file, "Directory").is_err());
        assert!(check_host_path("v", &file, "File").is_ok());
        assert!(check_host_path("v", &dir.path().join("nope"), "File").is_err());
        assert!(check_host_path("v", &dir.path().join("nope"), "").is_ok());
        let made = dir.path().join("new/dir");
        check_host_path("v", &made, "DirectoryOrCreate").unwrap();
        assert!(made.is_dir());
        let f2 = dir.path().join("other/file");
        check_host_path("v", &f2, "FileOrCreate").unwrap();
        assert!(f2.is_file());
        assert!(check_host_path("v", &file, "DirectoryOrCreate").is_err());
        assert!(check_host_path("v", &file, "Socket").is_err());
        assert!(check_host_path("v", &file, "Bogus").is_err());
    }

    #[test]
    fn mounts_name_volumes_and_keep_projections_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let vols = HashMap::from([
            (
                "data".to_owned(),
                HostVolume {
                    path: dir.path().to_owned(),
                    always_read_only: false,
                },
            ),
            (
                "cfg".to_owned(),
                HostVolume {
                    path: dir.path().join("cfg"),
                    always_read_only: true,
                },
            ),
        ]);
        let c: Container =
            serde_json::from_value(serde_json::json!({"name": "c", "volumeMounts": [
            {"name": "data", "mountPath": "/data", "subPath": "sub"},
            {"name": "cfg", "mountPath": "/cfg"},
            {"name": "data", "mountPath": "/ro", "readOnly": true}]}))
            .unwrap();
        let b = binds(&c, &vols).unwrap();
        assert_eq!(b[0].source, dir.path().join("sub"));
        assert!(dir.path().join("sub").is_dir());
        assert!(!b[0].read_only && b[1].read_only && b[2].read_only);
        let bad: Container = serde_json::from_value(
            serde_json::json!({"name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
        )
        .unwrap();
        assert!(binds(&bad, &vols).is_err());
        let escape: Container =
            serde_json::from_value(serde_json::json!({"name": "c", "volumeMounts": [
            {"name": "data", "mountPath": "/x", "subPath": "../../etc"}]}))
            .unwrap();
        assert!(binds(&escape, &vols).is_err());
    }
}
