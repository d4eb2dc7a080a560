//! Who may do what (roles, user names) and how devices are named and grouped (names, tags).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A user's or API key's role. Roles are ordered: each includes the rights of those below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reading-centre software: reads devices and opens meter-reading sessions.
    Reader,
    /// Fleet operations: devices, certificates, commands, configuration, jobs.
    Operator,
    /// Everything, including users, API keys and the audit log.
    Admin,
}

impl Role {
    /// Whether a principal with this role may do what `required` allows.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }

    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reader" => Ok(Role::Reader),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(ValidationError::new(
                "role",
                format!("unknown role {other:?}; expected admin, operator or reader"),
            )),
        }
    }
}

/// Checks `s` against a length range and a character class, naming `field` on failure.
fn check_token(
    field: &str,
    s: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    allowed_desc: &str,
) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let n = s.chars().count();
    if n > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters, got {n}"),
        ));
    }
    if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        return Err(ValidationError::new(
            field,
            format!("character {c:?} is not allowed; use {allowed_desc}"),
        ));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

string_newtype!(
    /// A login name: 1-64 characters of letters, digits, `.`, `_`, `-`, `@`.
    Username
);

impl Username {
    /// Validates a user name.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        check_token(
            "username",
            s,
            64,
            |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'),
            "letters, digits, '.', '_', '-' or '@'",
        )?;
        Ok(Self(s.to_owned()))
    }
}

string_newtype!(
    /// A device tag used for grouping and targeting: 1-64 characters of letters, digits,
    /// `.`, `_`, `-`, `:`, `/`, `=`. Examples: `region:north`, `meter=iskra`, `pilot`.
    Tag
);

impl Tag {
    /// Validates a tag.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        check_token(
            "tags",
            s,
            64,
            |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '='),
            "letters, digits, '.', '_', '-', ':', '/' or '='",
        )?;
        Ok(Self(s.to_owned()))
    }

    /// Validates a list of tags (at most 32, no duplicates), naming the index of a bad one.
    pub fn parse_list(tags: &[String]) -> Result<Vec<Tag>, ValidationError> {
        if tags.len() > 32 {
            return Err(ValidationError::new(
                "tags",
                format!("at most 32 tags per device, got {}", tags.len()),
            ));
        }
        let mut out: Vec<Tag> = Vec::with_capacity(tags.len());
        for (i, t) in tags.iter().enumerate() {
            let tag = Tag::parse(t).map_err(|e| e.at(format!("tags[{i}]")))?;
            if out.contains(&tag) {
                return Err(ValidationError::new(
                    format!("tags[{i}]"),
                    format!("duplicate tag {t:?}"),
                ));
            }
            out.push(tag);
        }
        Ok(out)
    }
}

string_newtype!(
    /// A human-readable device name: 1-128 printable characters, no control characters.
    DeviceName
);

impl DeviceName {
    /// Validates a device name.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        check_token("name", s, 128, |c| !c.is_control(), "printable characters")?;
        if s.trim() != s {
            return Err(ValidationError::new(
                "name",
                "must not start or end with white space",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_order() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Reader));
        assert!(!Role::Reader.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .reason
                .contains("unknown role")
        );
    }

    #[test]
    fn tags() {
        assert!(Tag::parse("region:north").is_ok());
        assert_eq!(Tag::parse("").unwrap_err().reason, "must not be empty");
        assert!(Tag::parse("a b").unwrap_err().reason.contains("' '"));
        let e = Tag::parse_list(&["a".into(), "b c".into()]).unwrap_err();
        assert_eq!(e.field, "tags[1]");
        let e = Tag::parse_list(&["a".into(), "a".into()]).unwrap_err();
        assert!(e.reason.contains("duplicate"));
    }

    #[test]
    fn names() {
        assert!(DeviceName::parse("Substation 4, meter 12").is_ok());
        assert!(DeviceName::parse(" x").is_err());
        assert!(DeviceName::parse("a\nb").is_err());
        assert!(Username::parse("ops@utility").is_ok());
        assert!(Username::parse("a/b").is_err());
    }
}
