//! Per-Pack resource bounds: a Pack whose values expand beyond `--max-values-size` (vars referenced over
//! and over, vars that multiply each other) is refused with `ValuesTooLarge` before any Helm process
//! starts, and refusing it costs the controller no memory.

use std::collections::BTreeMap;

use common::crd::{ClusterPackRepository, Pack, pack::PackState};
use e2e::{
    controller::ControllerProcess,
    packs::{
        ServedRepository, Want, helm_operations, served_repository, start_pack_controller,
        wait_pack, wait_repository,
    },
    test_env,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
/// The controller's peak RSS while refusing Packs that expand to 200 MB (and, nested, 100 GB). Before
/// the limit it peaked at 398 MiB on the first of them alone; idle it is a few tens of MiB.
const PEAK_RSS_BOUND: u64 = 100 * MIB;

async fn create_pack(
    client: &Client,
    ns: &str,
    name: &str,
    repo: &str,
    vars: Value,
    values: Value,
) {
    let pack: Pack = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "Pack",
        "metadata": { "name": name },
        "spec": {
            "chart": {
                "repository": { "kind": "ClusterPackRepository", "name": repo },
                "name": "genpack",
                "version": "0.1.0",
            },
            "vars": vars,
            "values": values,
        },
    }))
    .unwrap();
    Api::<Pack>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pack)
        .await
        .unwrap_or_else(|e| panic!("create Pack {name}: {e}"));
}

/// Checks a refused Pack: Ready=False ValuesTooLarge naming the size and the limit, Stalled, Invalid.
fn assert_refused(pack: &Pack, limit: u64) -> String {
    let name = pack.metadata.name.as_deref().unwrap_or_default();
    let s = pack.status.clone().unwrap_or_default();
    let condition = |type_: &str| s.conditions.iter().find(|c| c.type_ == type_).cloned();
    let ready = condition("Ready").unwrap();
    assert_eq!(ready.status, "False", "{name}");
    let message = ready.message;
    let expected = format!("the Pack's values expand to more than {limit} bytes (at least ");
    assert!(message.starts_with(&expected), "{name}: {message}");
    assert!(
        message.contains(&format!("limit --max-values-size={limit})")),
        "{name}: {message}"
    );
    let stalled = condition("Stalled").expect("Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "ValuesTooLarge")
    );
    assert_eq!(s.state, Some(PackState::Invalid), "{name}");
    message
}

/// (VmRSS, VmHWM) of a process in bytes: its resident memory now and at its peak.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Helm's release Secrets in `ns` (any release): none means nothing was ever installed there.
async fn release_secrets(client: &Client, ns: &str) -> Vec<String> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("owner=helm"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect()
}

async fn wait_repository_ready(
    client: &Client,
    repo: &ServedRepository,
    controller: &ControllerProcess,
) {
    let repos = Api::<ClusterPackRepository>::all(client.clone());
    wait_repository(&repos, &repo.name, "True", None, Some(controller)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_packs_are_refused_before_helm_and_memory_stays_flat() {
    let env = test_env();
    let ns = env.namespace("pack-limits").await;
    let client = env.client().await;
    let repo =
        served_repository(&client, &ns.name, &format!("{}-packs", ns.name), &["0.1.0"]).await;
    // The default flags: --max-values-size is 1 MiB.
    let controller = start_pack_controller(&env, &ns.name, "pack-0", &[]);
    // The repository is Ready, so the size is all that keeps these Packs from installing.
    wait_repository_ready(&client, &repo, &controller).await;
    let (rss_before, _) = rss(controller.pid());

    let big = "x".repeat(100_000);
    // The reported Pack: ~135 KB, a 100 KB var referenced 2,000 times, 200 MB expanded.
    create_pack(
        &client,
        &ns.name,
        "repeated",
        &repo.name,
        json!({ "BIG": big }),
        json!({ "items": vec!["{{ vars.BIG }}"; 2000] }),
    )
    .await;
    // The same, embedded in one string.
    create_pack(
        &client,
        &ns.name,
        "embedded",
        &repo.name,
        json!({ "BIG": big }),
        json!({ "text": "-{{ vars.BIG }}".repeat(2000) }),
    )
    .await;
    // Vars that multiply each other: 1 KB × 100 × 100 × 100 = 1 GB in V3, a few hundred bytes of Pack.
    let mut vars = BTreeMap::from([("V0".to_string(), json!("y".repeat(1000)))]);
    for level in 1..=3 {
        let text = format!("{{{{ vars.V{} }}}}", level - 1).repeat(100);
        vars.insert(format!("V{level}"), json!(text));
    }
    create_pack(
        &client,
        &ns.name,
        "nested",
        &repo.name,
        json!(vars),
        json!({ "config": "{{ vars.V3 }}" }),
    )
    .await;

    let packs: Api<Pack> = Api::namespaced(client.clone(), &ns.name);
    for name in ["repeated", "embedded", "nested"] {
        let pack = wait_pack(
            &packs,
            name,
            Want::reason("ValuesTooLarge").current(),
            Some(&controller),
        )
        .await;
        let message = assert_refused(&pack, MIB);
        let reached = if name == "nested" {
            "when reaching vars.V2"
        } else {
            "when reaching values."
        };
        assert!(message.contains(reached), "{name}: {message}");
    }
    let note = e2e::events::wait_event(
        &client,
        &ns.name,
        "repeated",
        "ValuesTooLarge",
        "--max-values-size=1048576",
    )
    .await;
    assert!(note.contains("reduce values or vars"), "{note}");

    // Refused again on every change of the spec.
    for round in 0..3 {
        let patch = json!({ "spec": { "vars": { "BIG": format!("{round}{big}") } } });
        packs
            .patch("repeated", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let pack = wait_pack(
            &packs,
            "repeated",
            Want::reason("ValuesTooLarge").current(),
            Some(&controller),
        )
        .await;
        assert_refused(&pack, MIB);
    }

    assert_eq!(
        helm_operations(&controller).await,
        0.0,
        "no Helm process may start for a refused Pack\n{}",
        controller.logs()
    );
    assert_eq!(
        release_secrets(&client, &ns.name).await,
        Vec::<String>::new()
    );

    let (rss_after, peak) = rss(controller.pid());
    assert!(
        peak < PEAK_RSS_BOUND,
        "the controller peaked at {} MiB refusing oversized Packs (bound {} MiB; {} MiB before them, {} MiB after)",
        peak / MIB,
        PEAK_RSS_BOUND / MIB,
        rss_before / MIB,
        rss_after / MIB
    );
    assert!(
        rss_after < rss_before + 50 * MIB,
        "RSS grew from {} MiB to {} MiB while refusing",
        rss_before / MIB,
        rss_after / MIB
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_values_size_is_the_limit_and_a_pack_within_it_installs() {
    let env = test_env();
    let ns = env.namespace("pack-limits-flag").await;
    let client = env.client().await;
    let repo =
        served_repository(&client, &ns.name, &format!("{}-packs", ns.name), &["0.1.0"]).await;
    let controller = start_pack_controller(&env, &ns.name, "pack-0", &["--max-values-size=4096"]);
    wait_repository_ready(&client, &repo, &controller).await;

    // No vars at all: plain values are measured too. `{"pad":"` and `"}` around the text: 10 bytes.
    create_pack(
        &client,
        &ns.name,
        "plain",
        &repo.name,
        json!({}),
        json!({ "pad": "z".repeat(4087) }),
    )
    .await;
    let packs: Api<Pack> = Api::namespaced(client.clone(), &ns.name);
    let pack = wait_pack(
        &packs,
        "plain",
        Want::reason("ValuesTooLarge").current(),
        Some(&controller),
    )
    .await;
    let message = assert_refused(&pack, 4096);
    assert!(message.contains("(at least 4097 bytes"), "{message}");
    assert_eq!(
        helm_operations(&controller).await,
        0.0,
        "{}",
        controller.logs()
    );

    // One byte less is exactly the limit: it installs.
    let patch = json!({ "spec": { "values": { "pad": "z".repeat(4086) } } });
    packs
        .patch("plain", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let pack = wait_pack(
        &packs,
        "plain",
        Want::reason("Applied").current(),
        Some(&controller),
    )
    .await;
    assert_eq!(
        pack.status.unwrap_or_default().state,
        Some(PackState::Applied)
    );
    assert_eq!(helm_operations(&controller).await, 1.0);
}
