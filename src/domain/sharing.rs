//! TLP 2.0 sharing: who may see a record.

use crate::pb::Tlp;

/// AMBER, AMBER+STRICT and RED records are seen only by their owner and
/// recipients; CLEAR and GREEN by every active partner.
pub fn is_restricted(tlp: i32) -> bool {
    matches!(
        Tlp::try_from(tlp),
        Ok(Tlp::Amber | Tlp::AmberStrict | Tlp::Red)
    )
}

/// Whether `viewer` may see a record. `recipients` are partner ids.
pub fn can_see(viewer: &str, owner: &str, tlp: i32, recipients: &[String]) -> bool {
    viewer == owner || !is_restricted(tlp) || recipients.iter().any(|r| r == viewer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility() {
        let recipients = vec!["b".to_owned()];
        assert!(can_see("c", "a", Tlp::Green as i32, &[]));
        assert!(can_see("c", "a", Tlp::Clear as i32, &[]));
        assert!(can_see("a", "a", Tlp::Red as i32, &[]));
        assert!(can_see("b", "a", Tlp::Amber as i32, &recipients));
        assert!(!can_see("c", "a", Tlp::Amber as i32, &recipients));
        assert!(!can_see("c", "a", Tlp::AmberStrict as i32, &recipients));
        assert!(!can_see("c", "a", Tlp::Red as i32, &recipients));
    }
}
