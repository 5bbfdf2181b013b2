//! `string_check`: exact and substring comparisons.

use super::spec::StringCheckOp;

/// 1.0 when the check holds. `ilike` folds case with full Unicode lowercasing, which is
/// what Python's `str.lower()` does too.
pub fn check(op: StringCheckOp, input: &str, reference: &str) -> f64 {
    let pass = match op {
        StringCheckOp::Eq => input == reference,
        StringCheckOp::Ne => input != reference,
        StringCheckOp::Like => input.contains(reference),
        StringCheckOp::Ilike => input.to_lowercase().contains(&reference.to_lowercase()),
    };
    if pass { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        assert_eq!(check(StringCheckOp::Eq, "Paris", "Paris"), 1.0);
        assert_eq!(check(StringCheckOp::Eq, "paris", "Paris"), 0.0);
        assert_eq!(check(StringCheckOp::Ne, "paris", "Paris"), 1.0);
        assert_eq!(check(StringCheckOp::Like, "I think Paris.", "Paris"), 1.0);
        assert_eq!(check(StringCheckOp::Like, "I think paris.", "Paris"), 0.0);
        assert_eq!(check(StringCheckOp::Ilike, "I think PARIS.", "paris"), 1.0);
        assert_eq!(check(StringCheckOp::Like, "anything", ""), 1.0);
    }
}
