//! The status of a reflector (of any kind): per-target states, the `synced/desired` summary, and the Ready /
//! Stalled / Reconciling conditions. Pure.

use common::{
    conditions::{self, Condition},
    crd::{ReflectorStatus, reflector::TargetStatus},
};

/// State of one target after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetState {
    Synced,
    Conflict,
    Error,
    NamespaceNotFound,
    OptedOut,
    Denied,
    /// Consent mode: the namespace does not name the source's namespace in its consent annotation.
    NotConsented,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Synced => "Synced",
            TargetState::Conflict => "Conflict",
            TargetState::Error => "Error",
            TargetState::NamespaceNotFound => "NamespaceNotFound",
            TargetState::OptedOut => "OptedOut",
            TargetState::Denied => "Denied",
            TargetState::NotConsented => "NotConsented",
        }
    }

    /// Whether the target counts in the `desired` of `synced/desired` (refused targets do not).
    pub fn desired(self) -> bool {
        !matches!(
            self,
            TargetState::OptedOut | TargetState::Denied | TargetState::NotConsented
        )
    }
}

/// One target's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetOutcome {
    pub namespace: String,
    pub state: TargetState,
    pub message: Option<String>,
}

/// Why the reflector cannot copy at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The source does not exist (copies were removed).
    SourceNotFound(String),
    /// The spec is invalid (e.g. the namespace selector).
    InvalidSpec(String),
    /// The source's type is one the controller refuses to copy (copies were removed).
    SourceTypeUnsupported(String),
}

/// Target counts of one sync.
struct Counts {
    desired: usize,
    synced: usize,
    conflicts: usize,
    errors: usize,
    missing: usize,
    not_consented: usize,
}

impl Counts {
    /// `blocked_targets`: a blocked sync has no outcomes; `desired` is the targets it would have.
    fn of(outcomes: &[TargetOutcome], blocked_targets: usize) -> Self {
        let count = |s: TargetState| outcomes.iter().filter(|o| o.state == s).count();
        Counts {
            desired: outcomes.iter().filter(|o| o.state.desired()).count() + blocked_targets,
            synced: count(TargetState::Synced),
            conflicts: count(TargetState::Conflict),
            errors: count(TargetState::Error),
            missing: count(TargetState::NamespaceNotFound),
            not_consented: count(TargetState::NotConsented),
        }
    }
}

/// The Ready condition's status, reason and message.
fn ready(blocked: Option<&Blocked>, c: &Counts) -> (bool, &'static str, String) {
    let Counts {
        desired,
        synced,
        conflicts,
        errors,
        missing,
        ..
    } = *c;
    let (ready, reason, message) = match blocked {
        Some(Blocked::SourceNotFound(m)) => (false, "SourceNotFound", m.clone()),
        Some(Blocked::InvalidSpec(m)) => (false, "InvalidSpec", m.clone()),
        Some(Blocked::SourceTypeUnsupported(m)) => (false, "SourceTypeUnsupported", m.clone()),
        None if conflicts > 0 => (
            false,
            "Conflict",
            format!(
                "{conflicts} target(s) hold an object this reflector does not manage; {synced}/{desired} synced"
            ),
        ),
        None if errors > 0 => (
            false,
            "Error",
            format!("{errors} target(s) failed; {synced}/{desired} synced; retrying"),
        ),
        None if missing > 0 => (
            false,
            "NamespaceNotFound",
            format!("{missing} named namespace(s) do not exist; {synced}/{desired} synced"),
        ),
        None => (true, "Synced", format!("{synced}/{desired} targets synced")),
    };
    // Not desired, so they leave Ready alone; said in its message, since the reflector's author
    // likely expects those copies and must ask the namespaces' owners.
    let not_consented = match c.not_consented {
        0 => String::new(),
        n => format!("; {n} namespace(s) have not consented to copies from this namespace"),
    };
    (ready, reason, message + &not_consented)
}

/// Builds the status from the outcomes, keeping condition transition times from `old`. `blocked`: why
/// nothing was copied, with the number of targets the reflector would copy into.
pub fn build(
    old: &ReflectorStatus,
    generation: Option<i64>,
    blocked: Option<(&Blocked, usize)>,
    outcomes: &[TargetOutcome],
) -> ReflectorStatus {
    let counts = Counts::of(outcomes, blocked.map_or(0, |(_, n)| n));
    let blocked = blocked.map(|(b, _)| b);
    let (ready, reason, message) = ready(blocked, &counts);
    let mut conds: Vec<Condition> = old.conditions.clone();
    let set = |conds: &mut Vec<Condition>, kind: &str, on: bool, reason: &str| {
        if on {
            conditions::set(
                conds,
                conditions::new(kind, true, reason, &message, generation),
            );
        } else {
            conditions::remove(conds, kind);
        }
    };
    conditions::set(
        &mut conds,
        conditions::new(conditions::READY, ready, reason, &message, generation),
    );
    // Stalled: nothing changes until someone acts (source, spec or a conflicting Secret).
    let stalled = blocked.is_some() || counts.conflicts > 0;
    set(&mut conds, conditions::STALLED, stalled, reason);
    // Reconciling: a retry is scheduled.
    let retrying = counts.errors > 0 && blocked.is_none();
    set(&mut conds, conditions::RECONCILING, retrying, "Retrying");
    let mut targets: Vec<TargetStatus> = outcomes
        .iter()
        .map(|o| TargetStatus {
            namespace: o.namespace.clone(),
            state: o.state.as_str().to_owned(),
            message: o.message.clone(),
        })
        .collect();
    targets.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    ReflectorStatus {
        observed_generation: generation,
        conditions: conds,
        summary: Some(format!("{}/{}", counts.synced, counts.desired)),
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ns: &str, state: TargetState) -> TargetOutcome {
        TargetOutcome {
            namespace: ns.into(),
            state,
            message: None,
        }
    }

    fn ready(s: &ReflectorStatus) -> (String, String) {
        let c = conditions::find(&s.conditions, conditions::READY).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    /// (what, blocked, outcomes, summary, Ready status, Ready reason, stalled)
    type Case<'a> = (
        &'a str,
        Option<Blocked>,
        Vec<TargetOutcome>,
        &'a str,
        &'a str,
        &'a str,
        bool,
    );

    /// One table of cases, one row each: long because the cases are many.
    #[test]
    fn table() {
        use TargetState::*;
        let cases: Vec<Case> = vec![
            (
                "all synced; refused ones not desired",
                None,
                vec![
                    outcome("b", Synced),
                    outcome("a", Synced),
                    outcome("c", OptedOut),
                    outcome("d", Denied),
                    outcome("e", NotConsented),
                ],
                "2/2",
                "True",
                "Synced",
                false,
            ),
            (
                "a conflict stalls",
                None,
                vec![
                    outcome("a", Synced),
                    outcome("b", Conflict),
                    outcome("c", Error),
                ],
                "1/3",
                "False",
                "Conflict",
                true,
            ),
            (
                "errors retry",
                None,
                vec![outcome("a", Synced), outcome("c", Error)],
                "1/2",
                "False",
                "Error",
                false,
            ),
            (
                "a named namespace is missing",
                None,
                vec![outcome("a", Synced), outcome("z", NamespaceNotFound)],
                "1/2",
                "False",
                "NamespaceNotFound",
                false,
            ),
            (
                "source missing",
                Some(Blocked::SourceNotFound("Secret certs/tls not found".into())),
                vec![],
                // The 3 targets it would copy into (the test passes 3 for every blocked case).
                "0/3",
                "False",
                "SourceNotFound",
                true,
            ),
            (
                "source of a type not copied",
                Some(Blocked::SourceTypeUnsupported(
                    "Secret certs/token is of type kubernetes.io/service-account-token".into(),
                )),
                vec![],
                "0/3",
                "False",
                "SourceTypeUnsupported",
                true,
            ),
            ("no targets", None, vec![], "0/0", "True", "Synced", false),
        ];
        for (what, blocked, outcomes, summary, status, reason, stalled) in cases {
            let s = build(
                &Default::default(),
                Some(3),
                blocked.as_ref().map(|b| (b, 3)),
                &outcomes,
            );
            assert_eq!(s.summary.as_deref(), Some(summary), "{what}");
            assert_eq!(ready(&s), (status.to_owned(), reason.to_owned()), "{what}");
            assert_eq!(
                conditions::find(&s.conditions, conditions::STALLED).is_some(),
                stalled,
                "{what}"
            );
            assert_eq!(s.observed_generation, Some(3));
            let names: Vec<&str> = s.targets.iter().map(|t| t.namespace.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "{what}: targets sorted");
        }
    }

    #[test]
    fn targets_without_consent_are_named_in_the_ready_message() {
        let outcomes = vec![
            outcome("a", TargetState::Synced),
            outcome("b", TargetState::NotConsented),
        ];
        let s = build(&Default::default(), Some(1), None, &outcomes);
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(
            ready.message,
            "1/1 targets synced; 1 namespace(s) have not consented to copies from this namespace"
        );
        let s = build(&Default::default(), Some(1), None, &outcomes[..1]);
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(ready.message, "1/1 targets synced");
    }

    #[test]
    fn unchanged_outcome_gives_identical_status() {
        let outcomes = vec![outcome("a", TargetState::Synced)];
        let first = build(&Default::default(), Some(1), None, &outcomes);
        let second = build(&first, Some(1), None, &outcomes);
        assert_eq!(first, second, "no status write when nothing changed");
    }
}
