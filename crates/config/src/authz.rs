//! Authorization: where the route rules find roles and groups, and the Cedar policies.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings shared by every route's authorization.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// The claim holding the caller's roles, as a dotted path (`realm_access.roles`). A string
    /// claim is split on spaces.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim holding the caller's groups, as a dotted path.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Cedar policies, evaluated for every route they judge (see `routes[].authorize.cedar`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cedar: Option<CedarConfig>,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        AuthorizationConfig { roles_claim: default_roles_claim(), groups_claim: default_groups_claim(), cedar: None }
    }
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// Cedar policies, their schema and entity data. Reloaded, with the same validation, when
/// any of these files changes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CedarConfig {
    /// Policy files, or folders whose `*.cedar` files are all read.
    pub policies: Vec<PathBuf>,
    /// A Cedar schema (`.cedarschema` text, or JSON); the built-in one (`portcullis authz
    /// schema`) when absent. Policies are validated against it strictly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<PathBuf>,
    /// Entity data (Cedar's JSON entity format): groups, role hierarchy, route groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities: Option<PathBuf>,
}
