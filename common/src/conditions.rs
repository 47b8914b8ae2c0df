//! Kubernetes-convention status conditions (type, status, reason, message, lastTransitionTime,
//! observedGeneration), kept in kstatus style: `Ready`, `Reconciling`, `Stalled`.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Builds a condition stamped now.
pub fn new(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: generation,
    }
}

/// Puts `next` into `conditions`, keeping the old `lastTransitionTime` when the status did not change
/// (so a condition's age tells how long it has been in that state).
pub fn set(conditions: &mut Vec<Condition>, mut next: Condition) {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == next.type_) {
        if existing.status == next.status {
            next.last_transition_time = existing.last_transition_time.clone();
        }
        *existing = next;
    } else {
        conditions.push(next);
    }
}

/// Removes the condition of `type_`, if present.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Finds the condition of `type_`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let mut conds = Vec::new();
        let mut first = new(READY, false, "Resolving", "looking", Some(1));
        first.last_transition_time = Time("2020-01-01T00:00:00Z".parse().unwrap());
        set(&mut conds, first.clone());
        set(
            &mut conds,
            new(READY, false, "ChartNotFound", "no chart", Some(2)),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].reason, "ChartNotFound");
        assert_eq!(conds[0].last_transition_time, first.last_transition_time);
        set(&mut conds, new(READY, true, "Applied", "ok", Some(2)));
        assert_ne!(conds[0].last_transition_time, first.last_transition_time);
        assert_eq!(find(&conds, READY).unwrap().status, "True");
        remove(&mut conds, READY);
        assert!(conds.is_empty());
    }
}
