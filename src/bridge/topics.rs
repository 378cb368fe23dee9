//! A bridge's forwards and subscriptions: the settings file's lists with what
//! `emqx_ctl bridges` changed on top (`BridgeRecord`, kept in RocksDB). Pure.
//!
//! Changes are kept as differences from the file (added, deleted), not as whole
//! lists, so an operator who edits the file and one who uses `emqx_ctl` both get
//! what they asked for after a restart.

use quay_storage::BridgeRecord;

use crate::codec::QoS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    file_forwards: Vec<String>,
    file_subscriptions: Vec<(String, QoS)>,
    pub record: BridgeRecord,
}

impl Topics {
    pub fn new(
        file_forwards: Vec<String>,
        file_subscriptions: Vec<(String, QoS)>,
        record: BridgeRecord,
    ) -> Topics {
        Topics {
            file_forwards,
            file_subscriptions,
            record,
        }
    }

    /// The forwards in force: the file's, less the deleted, then the added.
    pub fn forwards(&self) -> Vec<String> {
        let r = &self.record;
        let mut out: Vec<String> = self
            .file_forwards
            .iter()
            .filter(|f| !r.forwards_deleted.contains(f))
            .cloned()
            .collect();
        for f in &r.forwards_added {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }

    /// The subscriptions in force, each filter once (an added one overrides the
    /// file's QoS in place).
    pub fn subscriptions(&self) -> Vec<(String, QoS)> {
        let r = &self.record;
        let added = |t: &str| {
            r.subscriptions_added
                .iter()
                .find(|(a, _)| a == t)
                .and_then(|(_, q)| QoS::from_u8(*q))
        };
        let mut out: Vec<(String, QoS)> = self
            .file_subscriptions
            .iter()
            .filter(|(t, _)| !r.subscriptions_deleted.contains(t))
            .map(|(t, q)| (t.clone(), added(t).unwrap_or(*q)))
            .collect();
        for (t, q) in &r.subscriptions_added {
            if !out.iter().any(|(o, _)| o == t) {
                if let Some(q) = QoS::from_u8(*q) {
                    out.push((t.clone(), q));
                }
            }
        }
        out
    }

    pub fn add_forward(&mut self, filter: &str) {
        let r = &mut self.record;
        r.forwards_deleted.retain(|f| f != filter);
        if !self.file_forwards.iter().any(|f| f == filter)
            && !r.forwards_added.iter().any(|f| f == filter)
        {
            r.forwards_added.push(filter.to_string());
        }
    }

    pub fn del_forward(&mut self, filter: &str) {
        let r = &mut self.record;
        r.forwards_added.retain(|f| f != filter);
        if self.file_forwards.iter().any(|f| f == filter)
            && !r.forwards_deleted.iter().any(|f| f == filter)
        {
            r.forwards_deleted.push(filter.to_string());
        }
    }

    pub fn add_subscription(&mut self, filter: &str, qos: QoS) {
        let r = &mut self.record;
        r.subscriptions_deleted.retain(|f| f != filter);
        r.subscriptions_added.retain(|(f, _)| f != filter);
        if !self
            .file_subscriptions
            .iter()
            .any(|(f, q)| f == filter && *q == qos)
        {
            r.subscriptions_added.push((filter.to_string(), qos as u8));
        }
    }

    pub fn del_subscription(&mut self, filter: &str) {
        let r = &mut self.record;
        r.subscriptions_added.retain(|(f, _)| f != filter);
        if self.file_subscriptions.iter().any(|(f, _)| f == filter)
            && !r.subscriptions_deleted.iter().any(|f| f == filter)
        {
            r.subscriptions_deleted.push(filter.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new(
            vec!["a/#".into(), "b/#".into()],
            vec![("cmd/1".into(), QoS::AtLeastOnce)],
            BridgeRecord::default(),
        )
    }

    #[test]
    fn changes_apply_on_top_of_the_file_and_undo_cleanly() {
        let mut t = topics();
        t.add_forward("c/#");
        t.add_forward("a/#");
        t.del_forward("b/#");
        assert_eq!(t.forwards(), vec!["a/#", "c/#"]);
        t.add_forward("b/#");
        t.del_forward("c/#");
        assert_eq!(t.forwards(), vec!["a/#", "b/#"]);
        assert_eq!(
            t.record,
            BridgeRecord::default(),
            "back to the file: nothing kept"
        );
    }

    #[test]
    fn a_subscription_added_again_changes_its_qos_in_place() {
        let mut t = topics();
        t.add_subscription("cmd/2", QoS::ExactlyOnce);
        t.add_subscription("cmd/1", QoS::AtMostOnce);
        assert_eq!(
            t.subscriptions(),
            vec![
                ("cmd/1".to_string(), QoS::AtMostOnce),
                ("cmd/2".to_string(), QoS::ExactlyOnce)
            ]
        );
        t.del_subscription("cmd/1");
        t.del_subscription("cmd/2");
        assert!(t.subscriptions().is_empty());
        t.add_subscription("cmd/1", QoS::AtLeastOnce);
        assert_eq!(t.record.subscriptions_added, vec![]);
        assert_eq!(t.record.subscriptions_deleted, Vec::<String>::new());
    }

    #[test]
    fn a_file_edit_after_a_change_still_takes_effect() {
        let mut t = topics();
        t.add_forward("c/#");
        let record = t.record.clone();
        let edited = Topics::new(vec!["z/#".into()], vec![], record);
        assert_eq!(edited.forwards(), vec!["z/#", "c/#"]);
    }
}
