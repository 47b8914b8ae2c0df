//! Who a Pack's Helm operations run as: the ServiceAccount of its namespace named by
//! `spec.serviceAccountName`, else the controller's `--default-service-account` of that namespace, else
//! (neither set) the controller itself.
//!
//! The controller impersonates the ServiceAccount (`helm --kube-as-user system:serviceaccount:<ns>:<name>`,
//! and a client with `Impersonate-User` for its own writes to the release's records) rather than minting
//! a token for it (TokenRequest): nothing secret is written to disk or handed to Helm, no token expires
//! mid-operation, the API server's audit log names both the controller and the ServiceAccount, and the
//! API server adds the ServiceAccount's groups itself, so RoleBindings to `system:serviceaccounts:<ns>`
//! apply as they would to a Pod of that account. RBAC is evaluated for the ServiceAccount alone: what it
//! may not do, the Pack cannot do.

use common::crd::Pack;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{Api, Client, ResourceExt};

/// A ServiceAccount a Pack's release is managed as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
}

impl Identity {
    /// The identity of `pack`'s Helm operations; None: the controller's own.
    pub fn of(pack: &Pack, default_service_account: Option<&str>) -> Option<Identity> {
        let name = pack
            .spec
            .service_account_name
            .as_deref()
            .or(default_service_account)
            .filter(|n| !n.is_empty())?;
        Some(Identity {
            namespace: pack.namespace().unwrap_or_default(),
            name: name.to_owned(),
        })
    }

    /// The user name the API server knows the ServiceAccount by (what is impersonated).
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// Whether the ServiceAccount exists (read with the controller's own rights).
    pub async fn exists(&self, client: &Client) -> kube::Result<bool> {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &self.namespace);
        Ok(api.get_metadata_opt(&self.name).await?.is_some())
    }

    /// A client that acts as this ServiceAccount, from the controller's own configuration.
    pub fn client(&self, config: &kube::Config) -> kube::Result<Client> {
        let mut config = config.clone();
        config.auth_info.impersonate = Some(self.username());
        config.auth_info.impersonate_groups = None;
        Client::try_from(config)
    }

    /// What to tell the Pack's owner when the ServiceAccount does not exist.
    pub fn not_found_message(&self, explicit: bool) -> String {
        let from = if explicit {
            "spec.serviceAccountName"
        } else {
            "the controller's --default-service-account"
        };
        format!(
            "ServiceAccount {}/{} ({from}) does not exist: every Helm operation of this Pack runs as it. \
             Create it and grant it the rights the chart needs in this namespace (e.g. a RoleBinding to \
             the ClusterRole admin); the Pack proceeds as soon as it exists",
            self.namespace, self.name
        )
    }

    /// The fix for a Helm operation run as this ServiceAccount that RBAC refused: Helm's own text names
    /// the verb and resource (`… is forbidden: User "system:serviceaccount:…" cannot create resource
    /// "clusterrolebindings" …`); the fix is to grant that to this ServiceAccount, or leave the object out
    /// of the chart's values. Every request of such a Helm run is the ServiceAccount's, so any refusal
    /// in its output is one (the user name itself may be blanked, when a value holds the same string).
    pub fn explain_refusal(&self, message: &str) -> Option<String> {
        let refused = message.contains("is forbidden: User \"") && message.contains(" cannot ");
        refused.then(|| {
            format!(
                "the Pack runs as ServiceAccount {ns}/{name}, which may not do this: grant it to \
                 ServiceAccount {ns}/{name} (a Role/RoleBinding in this namespace; cluster-scoped or \
                 other namespaces' objects need a platform admin), or change the values so the chart does \
                 not render it",
                ns = self.namespace,
                name = self.name
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pack(sa: Option<&str>) -> Pack {
        serde_json::from_value(json!({
            "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
            "metadata": {"name": "web", "namespace": "team-a"},
            "spec": {
                "chart": {"repository": {"kind": "ClusterPackRepository", "name": "r"}, "name": "c"},
                "serviceAccountName": sa,
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_packs_own_service_account_wins_over_the_default_and_none_is_the_controller() {
        let cases = [
            (Some("deployer"), Some("default-deployer"), Some("deployer")),
            (None, Some("default-deployer"), Some("default-deployer")),
            (None, None, None),
            (Some("deployer"), None, Some("deployer")),
            (None, Some(""), None),
        ];
        for (own, default, want) in cases {
            let got = Identity::of(&pack(own), default);
            assert_eq!(
                got.as_ref().map(|i| i.name.as_str()),
                want,
                "{own:?} {default:?}"
            );
            if let Some(i) = got {
                assert_eq!(i.namespace, "team-a", "always the Pack's own namespace");
                assert_eq!(
                    i.username(),
                    format!("system:serviceaccount:team-a:{}", i.name)
                );
            }
        }
    }

    #[test]
    fn only_a_refusal_of_this_service_account_gets_the_fix() {
        let id = Identity {
            namespace: "team-a".into(),
            name: "deployer".into(),
        };
        let refused = "Error: INSTALLATION FAILED: clusterrolebindings.rbac.authorization.k8s.io is \
             forbidden: User \"system:serviceaccount:team-a:deployer\" cannot create resource \
             \"clusterrolebindings\" in API group \"rbac.authorization.k8s.io\" at the cluster scope";
        let fix = id.explain_refusal(refused).unwrap();
        assert!(
            fix.contains("grant it to ServiceAccount team-a/deployer"),
            "{fix}"
        );
        assert_eq!(id.explain_refusal("Error: some template error"), None);
        let blanked = "configmaps \"x\" is forbidden: User \"system:serviceaccount:<value>:<value>\" \
             cannot get resource \"configmaps\"";
        assert!(
            id.explain_refusal(blanked).is_some(),
            "a blanked user name is still a refusal"
        );
        assert!(
            id.not_found_message(true)
                .contains("team-a/deployer (spec.serviceAccountName)")
        );
    }
}
