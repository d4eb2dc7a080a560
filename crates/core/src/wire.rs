//! Closed sets of names stored in the database and shown in JSON: one macro makes each such
//! enum with its wire names, `ALL`, `as_str`, `parse` (a [`ValidationError`](crate::ValidationError)
//! listing the accepted names), `FromStr`, `Display` and serde, so a name is spelt once.
//! Wire names are the variants in snake_case (serde and the OpenAPI schema derive them from
//! `rename_all`); the tests of each enum check that `as_str` agrees with serde.

/// Declares a wire-named enum: `wire_enum! { /// doc  pub enum Mode("mode") { /// doc  Direct = "direct", } }`.
/// The string in parentheses is the field named by a rejection.
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($field:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; [$($wire),+].len()] = [$($name::$variant),+];

            /// The stored and JSON name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )+
                }
            }

            /// Parses a stored or JSON name; the rejection lists the accepted names.
            pub fn parse(s: &str) -> Result<Self, $crate::ValidationError> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        $crate::ValidationError::new(
                            $field,
                            format!("must be one of {}, got {s:?}", [$($wire),+].join(", ")),
                        )
                    })
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    wire_enum! {
        /// A test enum.
        pub enum Colour("colour") {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn names_round_trip_and_rejections_list_the_names() {
        for c in Colour::ALL {
            assert_eq!(Colour::parse(c.as_str()).unwrap(), c);
            assert_eq!(c.to_string(), c.as_str());
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
            let back: Colour = serde_json::from_str(&format!("\"{c}\"")).unwrap();
            assert_eq!(back, c);
        }
        let e = "green".parse::<Colour>().unwrap_err();
        assert_eq!(e.field, "colour");
        assert_eq!(e.reason, "must be one of red, dark_blue, got \"green\"");
    }

    fn serde_agrees<T>(all: &[T])
    where
        T: Copy + std::fmt::Display + serde::Serialize,
    {
        for v in all {
            assert_eq!(serde_json::to_value(v).unwrap(), v.to_string());
        }
    }

    #[test]
    fn every_wire_enum_agrees_with_serde() {
        serde_agrees(&crate::CommandState::ALL);
        serde_agrees(&crate::SessionState::ALL);
        serde_agrees(&crate::SessionMode::ALL);
        serde_agrees(&crate::CloseReason::ALL);
        serde_agrees(&crate::ActorKind::ALL);
        serde_agrees(&crate::AuditOutcome::ALL);
        serde_agrees(&crate::DriftState::ALL);
        serde_agrees(&crate::certificates::CertificateState::ALL);
        serde_agrees(&crate::certificates::AuditCheck::ALL);
        serde_agrees(&crate::certificates::Severity::ALL);
    }
}
