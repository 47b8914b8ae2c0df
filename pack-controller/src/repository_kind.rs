//! The two kinds of chart repository, `ClusterPackRepository` and the namespaced `PackRepository`: one
//! spec and one status, so one implementation ([`crate::repository`]) serves both through [`Repository`],
//! and the Pack side reads either through a [`RepositoryView`].
//!
//! Where they differ: a PackRepository serves only the Packs of its own namespace and reads its Secrets
//! there (its CRD refuses a `namespace` in a Secret reference); its index is cached under `ns/name`,
//! which no ClusterPackRepository name can be (names hold no `/`).

use std::fmt::Debug;

use common::crd::{
    ClusterPackRepository, ClusterPackRepositorySpec, ClusterPackRepositoryStatus, Pack,
    PackRepository, pack::RepositoryKind, repository::SecretReference,
};
use kube::{Api, Client, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};

/// A repository kind: what the shared repository reconcile needs to know of it.
pub trait Repository:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// The kind, as a Pack's `spec.chart.repository.kind` names it.
    const KIND: RepositoryKind;
    /// The `controller` label of its reconcile metrics.
    const CONTROLLER: &'static str;

    fn spec(&self) -> &ClusterPackRepositorySpec;
    fn status(&self) -> Option<&ClusterPackRepositoryStatus>;
    /// The API of the repository `namespace` holds (None: cluster-scoped, or every namespace).
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;

    fn view(&self) -> RepositoryView<'_> {
        RepositoryView {
            kind: Self::KIND,
            namespace: self.meta().namespace.as_deref(),
            name: self.meta().name.as_deref().unwrap_or_default(),
            generation: self.meta().generation,
            spec: self.spec(),
            status: self.status(),
        }
    }
}

impl Repository for ClusterPackRepository {
    const KIND: RepositoryKind = RepositoryKind::ClusterPackRepository;
    const CONTROLLER: &'static str = "clusterpackrepository";

    fn spec(&self) -> &ClusterPackRepositorySpec {
        &self.spec
    }
    fn status(&self) -> Option<&ClusterPackRepositoryStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, _namespace: Option<&str>) -> Api<Self> {
        Api::all(client)
    }
}

impl Repository for PackRepository {
    const KIND: RepositoryKind = RepositoryKind::PackRepository;
    const CONTROLLER: &'static str = "packrepository";

    fn spec(&self) -> &ClusterPackRepositorySpec {
        &self.spec.repository
    }
    fn status(&self) -> Option<&ClusterPackRepositoryStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, namespace: Option<&str>) -> Api<Self> {
        match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        }
    }
}

/// A repository of either kind, as read.
#[derive(Clone, Debug)]
pub enum AnyRepository {
    Cluster(ClusterPackRepository),
    Namespaced(PackRepository),
}

impl AnyRepository {
    pub fn view(&self) -> RepositoryView<'_> {
        match self {
            AnyRepository::Cluster(r) => r.view(),
            AnyRepository::Namespaced(r) => r.view(),
        }
    }

    /// The repository `pack` references: a PackRepository only in the Pack's own namespace.
    pub async fn of(client: &Client, pack: &Pack) -> kube::Result<Option<AnyRepository>> {
        let name = &pack.spec.chart.repository.name;
        Ok(match pack.spec.chart.repository.kind {
            RepositoryKind::ClusterPackRepository => {
                Api::<ClusterPackRepository>::all(client.clone())
                    .get_opt(name)
                    .await?
                    .map(AnyRepository::Cluster)
            }
            RepositoryKind::PackRepository => {
                let ns = pack.namespace().unwrap_or_default();
                Api::<PackRepository>::namespaced(client.clone(), &ns)
                    .get_opt(name)
                    .await?
                    .map(AnyRepository::Namespaced)
            }
        })
    }
}

/// What the Pack side and the fetch read of a repository of either kind.
#[derive(Clone, Copy, Debug)]
pub struct RepositoryView<'a> {
    pub kind: RepositoryKind,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a ClusterPackRepositorySpec,
    pub status: Option<&'a ClusterPackRepositoryStatus>,
}

impl RepositoryView<'_> {
    /// Its key in the index cache.
    pub fn cache_key(&self) -> String {
        cache_key(self.kind, self.namespace, self.name)
    }

    /// `ClusterPackRepository `x`` or `PackRepository `ns/x``, as messages name it.
    pub fn describe(&self) -> String {
        format!("{:?} `{}`", self.kind, self.cache_key())
    }

    /// Whether its status says its index was fetched fine.
    pub fn reports_ready(&self) -> bool {
        self.status
            .and_then(|s| common::conditions::find(&s.conditions, common::conditions::READY))
            .is_some_and(|c| c.status == "True")
    }

    /// The namespace `r` is read in: its own for a PackRepository (which may not name another), the one
    /// `r` names for a ClusterPackRepository (which must name one). Err: why not, for the status.
    pub fn secret_namespace<'r>(&'r self, r: &'r SecretReference) -> Result<&'r str, String> {
        match (self.kind, self.namespace, r.namespace.as_deref()) {
            (RepositoryKind::PackRepository, Some(own), None) => Ok(own),
            (RepositoryKind::PackRepository, Some(own), Some(other)) if other == own => Ok(own),
            (RepositoryKind::PackRepository, _, Some(other)) => Err(format!(
                "a PackRepository reads its Secrets in its own namespace, not in `{other}`: remove namespace"
            )),
            (RepositoryKind::ClusterPackRepository, _, Some(ns)) => Ok(ns),
            _ => Err(format!(
                "Secret `{}` needs a namespace in a ClusterPackRepository",
                r.name
            )),
        }
    }
}

/// The index cache key of a repository: a ClusterPackRepository's name, a PackRepository's `ns/name`.
pub fn cache_key(kind: RepositoryKind, namespace: Option<&str>, name: &str) -> String {
    match (kind, namespace) {
        (RepositoryKind::PackRepository, Some(ns)) => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// The cache key of the repository `pack` references.
pub fn referenced_key(pack: &Pack) -> String {
    let r = &pack.spec.chart.repository;
    cache_key(r.kind, pack.namespace().as_deref(), &r.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_the_two_kinds_never_collide() {
        let cluster = cache_key(RepositoryKind::ClusterPackRepository, None, "charts");
        let namespaced = cache_key(RepositoryKind::PackRepository, Some("team"), "charts");
        assert_eq!(cluster, "charts");
        assert_eq!(namespaced, "team/charts");
        // A ClusterPackRepository named `team/charts` cannot exist: names hold no `/`.
        assert_ne!(cluster, namespaced);
    }

    #[test]
    fn secrets_of_a_pack_repository_stay_in_its_namespace() {
        let spec: ClusterPackRepositorySpec =
            serde_json::from_value(serde_json::json!({"url": "https://x"})).unwrap();
        let view = |kind, namespace| RepositoryView {
            kind,
            namespace,
            name: "r",
            generation: None,
            spec: &spec,
            status: None,
        };
        let r = |ns: Option<&str>| SecretReference {
            name: "creds".into(),
            namespace: ns.map(Into::into),
        };
        let ns = view(RepositoryKind::PackRepository, Some("team"));
        assert_eq!(ns.secret_namespace(&r(None)).unwrap(), "team");
        assert!(ns.secret_namespace(&r(Some("kube-system"))).is_err());
        let cluster = view(RepositoryKind::ClusterPackRepository, None);
        assert_eq!(cluster.secret_namespace(&r(Some("a"))).unwrap(), "a");
        assert!(cluster.secret_namespace(&r(None)).is_err());
    }
}
