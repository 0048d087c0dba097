//! The Kubernetes manifests in `deploy/`, read back as far as the farm's tests need
//! them: which binary each container runs, with which environment, ports, probes and
//! volumes. Kubernetes' own schema is checked by `make deploy-check`; what is read
//! here is what the binaries must agree with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One manifest file's resource (one resource per file).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// `Deployment`, `Service`, ...
    pub kind: String,
    /// Its name.
    pub metadata: Metadata,
    /// The parts of `spec` the tests read.
    #[serde(default)]
    pub spec: Spec,
    /// A ConfigMap's data.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// `metadata`.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    /// `metadata.name`.
    pub name: String,
}

/// The parts of a workload's, a Service's, a NetworkPolicy's or a cert-manager
/// Certificate's `spec` the tests read.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// A workload's pod template.
    pub template: Option<Template>,
    /// A Service's ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// A StatefulSet's per-pod volumes.
    #[serde(default)]
    pub volume_claim_templates: Vec<ClaimTemplate>,
    /// A NetworkPolicy's pods.
    pub pod_selector: Option<LabelSelector>,
    /// A NetworkPolicy's directions (`Ingress`, `Egress`).
    #[serde(default)]
    pub policy_types: Vec<String>,
    /// A NetworkPolicy's ingress rules.
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
    /// The Secret a Certificate is written to.
    pub secret_name: Option<String>,
    /// A Certificate's DNS names.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// A Certificate's issuer.
    pub issuer_ref: Option<IssuerRef>,
}

/// A pod template.
#[derive(Debug, Deserialize)]
pub struct Template {
    /// The pod's labels.
    #[serde(default)]
    pub metadata: TemplateMetadata,
    /// The pod's spec.
    pub spec: PodSpec,
}

/// A pod template's `metadata`.
#[derive(Debug, Default, Deserialize)]
pub struct TemplateMetadata {
    /// The pod's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A label selector (`matchLabels` only: `matchExpressions` fail to parse, so a test
/// never reads a selector as wider than it is).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels a match carries.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    /// Whether an object with `labels` matches (an empty selector matches all).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A NetworkPolicy ingress rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// Who may connect (empty: anyone).
    #[serde(default)]
    pub from: Vec<Peer>,
    /// To which ports (empty: all).
    #[serde(default)]
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy peer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Pods (in the policy's namespace, or in `namespace_selector`'s).
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    pub ip_block: Option<IpBlock>,
}

/// An address range.
#[derive(Debug, Deserialize)]
pub struct IpBlock {
    /// The range.
    pub cidr: String,
}

/// A NetworkPolicy port.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    /// A port name or number (absent: all).
    pub port: Option<String>,
    /// `TCP` unless it says.
    pub protocol: Option<String>,
    /// The end of a range.
    pub end_port: Option<u16>,
}

/// A Certificate's issuer.
#[derive(Debug, Deserialize)]
pub struct IssuerRef {
    /// `Issuer` or `ClusterIssuer`.
    pub kind: Option<String>,
    /// Its name.
    pub name: String,
}

/// A pod.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// How long Kubernetes waits after SIGTERM before SIGKILL (default 30 s).
    pub termination_grace_period_seconds: Option<u64>,
    /// The containers.
    pub containers: Vec<Container>,
    /// The pod's volumes.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Who the pod's processes run as.
    pub security_context: Option<PodSecurityContext>,
}

/// A pod's `securityContext`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    /// The group that owns the pod's volumes (Secret files included).
    pub fs_group: Option<u32>,
}

/// A container.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Its name.
    pub name: String,
    /// Its image (a name the kustomization maps to a registry).
    pub image: String,
    /// The command, when it overrides the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Variables from ConfigMaps or Secrets.
    #[serde(default)]
    pub env_from: Vec<EnvFrom>,
    /// Named ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// Probes.
    pub startup_probe: Option<Probe>,
    /// Probes.
    pub liveness_probe: Option<Probe>,
    /// Probes.
    pub readiness_probe: Option<Probe>,
    /// Mounts.
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
}

/// One `env` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Its name.
    pub name: String,
    /// A literal value.
    pub value: Option<String>,
    /// A value from elsewhere.
    pub value_from: Option<EnvSource>,
}

/// `valueFrom`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvSource {
    /// A key of a Secret.
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a ConfigMap.
    pub config_map_key_ref: Option<KeyRef>,
    /// A field of the pod.
    pub field_ref: Option<FieldRef>,
}

/// A key of a named object.
#[derive(Debug, Deserialize)]
pub struct KeyRef {
    /// The object.
    pub name: String,
    /// The key.
    pub key: String,
}

/// A field of the pod.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    /// E.g. `metadata.name`.
    pub field_path: String,
}

/// `envFrom`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvFrom {
    /// A whole ConfigMap.
    pub config_map_ref: Option<NameRef>,
    /// A whole Secret.
    pub secret_ref: Option<NameRef>,
}

/// A reference by name.
#[derive(Debug, Deserialize)]
pub struct NameRef {
    /// The name.
    pub name: String,
}

/// A container port.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Its name, which probes and Services use.
    pub name: Option<String>,
    /// The number.
    pub container_port: u16,
}

/// A probe (the HTTP kind is the one the farm uses).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// `httpGet`.
    pub http_get: Option<HttpGet>,
}

/// An HTTP probe.
#[derive(Debug, Deserialize)]
pub struct HttpGet {
    /// The path.
    pub path: String,
    /// A port name or number.
    pub port: String,
    /// `HTTP` (the default) or `HTTPS`.
    #[serde(default)]
    pub scheme: Option<String>,
}

/// A Service port.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Its name.
    pub name: String,
    /// The port clients use.
    pub port: u16,
    /// The container port's name or number.
    pub target_port: String,
}

/// A StatefulSet's claim template.
#[derive(Debug, Deserialize)]
pub struct ClaimTemplate {
    /// Its name, which mounts use.
    pub metadata: Metadata,
}

/// A mount.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// The volume.
    pub name: String,
    /// Where it is mounted.
    pub mount_path: String,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A pod volume.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// A claim.
    pub persistent_volume_claim: Option<ClaimRef>,
    /// A Secret.
    pub secret: Option<SecretVolume>,
}

/// A claim used as a volume.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    /// The claim.
    pub claim_name: String,
}

/// A Secret used as a volume.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolume {
    /// The Secret.
    pub secret_name: String,
    /// Its keys as files.
    #[serde(default)]
    pub items: Vec<KeyToPath>,
    /// The files' mode (Kubernetes' default: 0644).
    pub default_mode: Option<u32>,
}

/// A Secret key as a file.
#[derive(Debug, Deserialize)]
pub struct KeyToPath {
    /// The key.
    pub key: String,
    /// The file, relative to the mount.
    pub path: String,
}

/// `kustomization.yaml` (a Kustomization, or a Component's).
#[derive(Debug, Deserialize)]
pub struct Kustomization {
    /// `Kustomization` or `Component`.
    pub kind: String,
    /// The namespace everything goes in (a Component has none).
    #[serde(default)]
    pub namespace: String,
    /// The resource files.
    pub resources: Vec<String>,
    /// Image names and where they are pushed.
    #[serde(default)]
    pub images: Vec<KustomizeImage>,
}

/// An image mapping.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KustomizeImage {
    /// The name the manifests use.
    pub name: String,
}

/// Every manifest in the folder.
#[derive(Debug)]
pub struct Deploy {
    /// The folder.
    pub dir: PathBuf,
    /// `kustomization.yaml`.
    pub kustomization: Kustomization,
    /// The other `.yaml` files by file name.
    pub resources: BTreeMap<String, Resource>,
}

impl Deploy {
    /// Reads `dir`: `kustomization.yaml` and every other `.yaml` file as one resource.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let kustomization = parse(
            dir,
            "kustomization.yaml",
            &read(&dir.join("kustomization.yaml"))?,
        )?;
        let mut resources = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                resources.insert(name.clone(), parse(dir, &name, &read(&path)?)?);
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            kustomization,
            resources,
        })
    }

    /// The resource of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> &Resource {
        self.resources
            .values()
            .find(|r| r.kind == kind && r.metadata.name == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {}", self.dir.display()))
    }

    /// The pod spec of the workload `kind`/`name` and its one container.
    pub fn pod(&self, kind: &str, name: &str) -> (&PodSpec, &Container) {
        let pod = &self
            .get(kind, name)
            .spec
            .template
            .as_ref()
            .unwrap_or_else(|| panic!("{kind} {name} has no pod template"))
            .spec;
        assert_eq!(pod.containers.len(), 1, "{kind} {name}: one container");
        (pod, &pod.containers[0])
    }

    /// Every workload's pod spec, by `Kind/name`.
    pub fn pods(&self) -> impl Iterator<Item = (String, &PodSpec)> {
        self.resources.values().filter_map(|r| {
            let t = r.spec.template.as_ref()?;
            Some((format!("{}/{}", r.kind, r.metadata.name), &t.spec))
        })
    }

    /// The environment Kubernetes gives `c`: `envFrom` ConfigMaps first, then `env` (later
    /// entries win). Secret keys come from `secret(name, key)`; `metadata.name` is
    /// `pod_name`.
    pub fn env(
        &self,
        c: &Container,
        pod_name: &str,
        secret: &dyn Fn(&str, &str) -> String,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for from in &c.env_from {
            if let Some(cm) = &from.config_map_ref {
                out.extend(self.get("ConfigMap", &cm.name).data.clone());
            }
            assert!(
                from.secret_ref.is_none(),
                "{}: secrets go in by key",
                c.name
            );
        }
        for var in &c.env {
            let value = match (&var.value, &var.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(src)) => {
                    match (&src.secret_key_ref, &src.config_map_key_ref, &src.field_ref) {
                        (Some(k), None, None) => secret(&k.name, &k.key),
                        (None, Some(k), None) => {
                            self.get("ConfigMap", &k.name).data[&k.key].clone()
                        }
                        (None, None, Some(f)) if f.field_path == "metadata.name" => {
                            pod_name.to_owned()
                        }
                        _ => panic!(
                            "{}: {} has a source these tests do not read",
                            c.name, var.name
                        ),
                    }
                }
                _ => panic!(
                    "{}: {} needs exactly one of value and valueFrom",
                    c.name, var.name
                ),
            };
            out.insert(var.name.clone(), value);
        }
        out
    }
}

impl Container {
    /// The mount holding `path` (or mounted at it), and the rest of the path below it
    /// (empty for the mount point itself).
    pub fn mount_of<'a>(&self, path: &'a str) -> Option<(&VolumeMount, &'a str)> {
        self.volume_mounts.iter().find_map(|m| {
            let rest = path.strip_prefix(m.mount_path.trim_end_matches('/'))?;
            match rest {
                "" => Some((m, "")),
                _ => rest.strip_prefix('/').map(|rest| (m, rest)),
            }
        })
    }

    /// The number of the port named `name` (or given as a number).
    pub fn port(&self, name: &str) -> u16 {
        name.parse().ok().unwrap_or_else(|| {
            self.ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{}: no port named {name}", self.name))
                .container_port
        })
    }

    /// Its probes with their kinds.
    pub fn probes(&self) -> impl Iterator<Item = (&'static str, &Probe)> {
        [
            ("startupProbe", &self.startup_probe),
            ("livenessProbe", &self.liveness_probe),
            ("readinessProbe", &self.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(k, p)| Some((k, p.as_ref()?)))
    }
}

impl PodSpec {
    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// The Secret volume and item that put a file at `path` in container `c`.
    pub fn secret_file(&self, c: &Container, path: &str) -> Option<(&SecretVolume, &KeyToPath)> {
        let (mount, rest) = c.mount_of(path)?;
        let secret = self.volume(&mount.name)?.secret.as_ref()?;
        Some((secret, secret.items.iter().find(|i| i.path == rest)?))
    }

    /// Kubernetes' SIGTERM-to-SIGKILL time, in seconds.
    pub fn grace_seconds(&self) -> u64 {
        self.termination_grace_period_seconds.unwrap_or(30)
    }
}

fn parse<T: serde::de::DeserializeOwned>(dir: &Path, name: &str, text: &str) -> Result<T, String> {
    marked_yaml::from_yaml(0, text).map_err(|e| format!("{}: {e}", dir.join(name).display()))
}
