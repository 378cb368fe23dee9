//! Topic names and topic filters: validation and matching (MQTT 5 §4.7).
//!
//! Pure functions; the router and the retained index both use them.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic {0:?} contains a wildcard")]
    WildcardInName(String),
    #[error("filter {0:?}: '#' must be the last level and alone in it")]
    BadMultiLevel(String),
    #[error("filter {0:?}: '+' must occupy a whole level")]
    BadSingleLevel(String),
    #[error("topic {topic:?} has {levels} levels, more than {max}")]
    TooManyLevels {
        topic: String,
        levels: usize,
        max: usize,
    },
    #[error("topic {0:?} contains NUL")]
    Nul(String),
    #[error("filter {0:?}: shared subscription needs $share/<group>/<filter>")]
    BadShare(String),
}

/// Validate a PUBLISH topic name. `max_levels` 0 = unlimited.
pub fn validate_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName(topic.to_owned()));
    }
    check_common(topic, max_levels)
}

/// Validate a SUBSCRIBE/UNSUBSCRIBE topic filter. `max_levels` 0 = unlimited.
pub fn validate_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(TopicError::BadMultiLevel(filter.to_owned()));
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::BadSingleLevel(filter.to_owned()));
        }
    }
    check_common(filter, max_levels)
}

fn check_common(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    if topic.contains('\0') {
        return Err(TopicError::Nul(topic.to_owned()));
    }
    if max_levels > 0 {
        let levels = topic.split('/').count();
        if levels > max_levels {
            return Err(TopicError::TooManyLevels {
                topic: topic.to_owned(),
                levels,
                max: max_levels,
            });
        }
    }
    Ok(())
}

pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Does `filter` match `topic`? Topics starting with `$` are not matched by a filter
/// whose first level is a wildcard (MQTT 5 §4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters_are_validated() {
        assert!(validate_name("a/b", 0).is_ok());
        assert!(validate_name("/", 0).is_ok());
        assert_eq!(validate_name("", 0), Err(TopicError::Empty));
        assert!(matches!(
            validate_name("a/+", 0),
            Err(TopicError::WildcardInName(_))
        ));
        assert!(matches!(validate_name("a\0b", 0), Err(TopicError::Nul(_))));
        assert!(validate_filter("a/+/c/#", 0).is_ok());
        assert!(validate_filter("#", 0).is_ok());
        assert!(validate_filter("+", 0).is_ok());
        assert!(matches!(
            validate_filter("a/#/c", 0),
            Err(TopicError::BadMultiLevel(_))
        ));
        assert!(matches!(
            validate_filter("a/b#", 0),
            Err(TopicError::BadMultiLevel(_))
        ));
        assert!(matches!(
            validate_filter("a/b+", 0),
            Err(TopicError::BadSingleLevel(_))
        ));
        assert!(matches!(
            validate_name("a/b/c", 2),
            Err(TopicError::TooManyLevels {
                levels: 3,
                max: 2,
                ..
            })
        ));
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/brokers"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!matches("a/b", "a/b/c"));
    }
}
