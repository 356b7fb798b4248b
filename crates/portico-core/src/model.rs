//! Domain states and kinds: organizations, roles, lifecycle, visibility, pricing.

use crate::values::{Currency, Money};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

macro_rules! str_enum {
    ($name:ident, $field:literal, { $($variant:ident => $s:literal),* $(,)? }) => {
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),* }
            }
            pub fn parse(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($name::$variant),)*
                    _ => Err(Error::invalid($field, format!(
                        "`{s}` is not one of: {}", [$($s),*].join(", ")
                    ))),
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// What an organization is on the marketplace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgKind {
    /// Publishes and prices APIs.
    Provider,
    /// Builds apps that call APIs.
    Consumer,
    /// The marketplace operator.
    Platform,
}
str_enum!(OrgKind, "kind", { Provider => "provider", Consumer => "consumer", Platform => "platform" });

/// A member's role inside an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Owner,
    Admin,
    Developer,
    Billing,
}
str_enum!(MemberRole, "role", { Owner => "owner", Admin => "admin", Developer => "developer", Billing => "billing" });

/// What a member of an organization may do there. Every decision about a role is made here,
/// in [`MemberRole::allows`]; the control plane's `Principal` adds platform admins (who may do
/// everything) and the services ask it, never a role directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// See the organization and its objects (apps, keys' metadata, subscriptions, usage).
    Read,
    /// Change the organization's APIs, plans, apps, keys, subscriptions and webhooks.
    Manage,
    /// Invite people, change members' roles (except to and from owner) and remove members.
    ManageMembers,
    /// Make someone an owner, change an owner's role or remove an owner.
    ManageOwners,
    /// Read the organization's audit log.
    ReadAudit,
}

impl MemberRole {
    /// Whether this role grants `p`.
    ///
    /// | role | read | manage | members | owners | audit |
    /// | --- | --- | --- | --- | --- | --- |
    /// | owner | ✓ | ✓ | ✓ | ✓ | ✓ |
    /// | admin | ✓ | ✓ | ✓ | | |
    /// | developer | ✓ | ✓ | | | |
    /// | billing | ✓ | | | | |
    pub fn allows(self, p: Permission) -> bool {
        use MemberRole::*;
        match p {
            Permission::Read => true,
            Permission::Manage => matches!(self, Owner | Admin | Developer),
            Permission::ManageMembers => matches!(self, Owner | Admin),
            Permission::ManageOwners | Permission::ReadAudit => self == Owner,
        }
    }

    /// May change the organization's APIs, plans, apps and keys ([`Permission::Manage`]).
    pub fn can_manage(self) -> bool {
        self.allows(Permission::Manage)
    }
}

/// Where an API version is in its life. Only `published` and `deprecated` versions serve traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    Draft,
    Published,
    Deprecated,
    Retired,
}
str_enum!(LifecycleState, "state", { Draft => "draft", Published => "published", Deprecated => "deprecated", Retired => "retired" });

impl LifecycleState {
    pub fn serves_traffic(self) -> bool {
        matches!(self, LifecycleState::Published | LifecycleState::Deprecated)
    }
    /// Whether a version may move from `self` to `to`: forward only, never back to draft.
    pub fn can_move_to(self, to: LifecycleState) -> bool {
        self == to || (to > self && to != LifecycleState::Draft)
    }
}

/// Who can see an API or a plan in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Public,
    /// Only the provider and platform admins see it.
    Private,
}
str_enum!(Visibility, "visibility", { Public => "public", Private => "private" });

/// A subscription's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Active,
    Cancelled,
}
str_enum!(SubscriptionStatus, "status", { Active => "active", Cancelled => "cancelled" });

/// How a plan is priced. The billing issue adds pay-per-use, tiers and overage as more variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pricing {
    Free,
    /// A flat price per calendar month, in minor units.
    FlatMonthly {
        amount_minor: i64,
        currency: Currency,
    },
}

impl Pricing {
    pub fn validate(&self) -> Result<()> {
        if let Pricing::FlatMonthly { amount_minor, .. } = self
            && *amount_minor <= 0
        {
            return Err(Error::invalid(
                "pricing",
                "a flat_monthly price must be above zero (use `type: free` for a free plan)",
            ));
        }
        Ok(())
    }
    pub fn monthly_price(&self) -> Option<Money> {
        match self {
            Pricing::Free => None,
            Pricing::FlatMonthly { amount_minor, currency } => {
                Some(Money { amount_minor: *amount_minor, currency: currency.clone() })
            }
        }
    }
    pub fn is_free(&self) -> bool {
        matches!(self, Pricing::Free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_moves_forward_only() {
        use LifecycleState::*;
        assert!(Draft.can_move_to(Published));
        assert!(Published.can_move_to(Deprecated));
        assert!(Published.can_move_to(Retired));
        assert!(!Published.can_move_to(Draft));
        assert!(!Retired.can_move_to(Published));
        assert!(Published.serves_traffic() && Deprecated.serves_traffic());
        assert!(!Draft.serves_traffic() && !Retired.serves_traffic());
    }

    #[test]
    fn enums_parse_with_a_useful_error() {
        assert_eq!(OrgKind::parse("provider").unwrap(), OrgKind::Provider);
        let e = OrgKind::parse("vendor").unwrap_err().to_string();
        assert!(e.contains("provider, consumer, platform"), "{e}");
    }

    #[test]
    fn pricing() {
        let p: Pricing =
            serde_json::from_str(r#"{"type":"flat_monthly","amount_minor":2900,"currency":"USD"}"#).unwrap();
        assert_eq!(p.monthly_price().unwrap().to_string(), "29.00 USD");
        assert!(p.validate().is_ok());
        let zero = Pricing::FlatMonthly { amount_minor: 0, currency: Currency::usd() };
        assert!(zero.validate().is_err());
        assert!(Pricing::Free.is_free());
    }
}
