//! Cedar policies: loading with strict validation, slicing by route and action, and
//! evaluation with explained, fail-closed decisions.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, ResourceConstraint, RestrictedExpression, Schema, ValidationMode, Validator,
};
use portcullis_config::{AuthorizationConfig, CedarConfig};
use portcullis_core::{ByPrincipal, Principal, PrincipalKind};
use serde_json::Value;

use crate::Input;
use crate::rules::ClaimPath;

/// The built-in schema, used when `authorization.cedar.schema` is absent.
pub const DEFAULT_SCHEMA: &str = include_str!("schema.cedarschema");

/// A policy set, validated against its schema, with its entity data.
pub struct Policies {
    /// Unique per load: what the per-thread entity memo is valid for.
    generation: u64,
    all: PolicySet,
    /// Entity data and the schema's actions, for ancestors (`in`) and attributes.
    data: Entities,
    authorizer: Authorizer,
    roles_claim: ClaimPath,
    groups_claim: ClaimPath,
    route_type: EntityTypeName,
    audience_type: EntityTypeName,
    action_type: EntityTypeName,
    /// Parsed once: parsing a type name runs Cedar's parser.
    types: Types,
}

struct Types {
    role: EntityTypeName,
    group: EntityTypeName,
    user: EntityTypeName,
    client: EntityTypeName,
    workload: EntityTypeName,
    anonymous: EntityUid,
}

impl Policies {
    /// The claims the policies may read as tags (`principal.getTag("email")`,
    /// `principal.hasTag("email")`), and whether some tag is named by an expression rather
    /// than a literal (then any claim may matter).
    pub fn tags_read(&self) -> (std::collections::BTreeSet<String>, bool) {
        let mut names = std::collections::BTreeSet::new();
        let mut any = false;
        for p in self.all.policies() {
            let text = p.to_string();
            for call in ["getTag", "hasTag"] {
                for (at, _) in text.match_indices(call) {
                    // Cedar allows space before the parenthesis: `getTag ("dept")`.
                    let Some(rest) = text[at + call.len()..].trim_start().strip_prefix('(') else { continue };
                    let rest = rest.trim_start();
                    let literal = rest.strip_prefix('"').and_then(|r| r.split_once('"')).map(|(n, _)| n);
                    match literal {
                        Some(n) if !n.contains('\\') => {
                            names.insert(n.to_string());
                        }
                        _ => any = true,
                    }
                }
            }
        }
        (names, any)
    }
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").field("policies", &self.all.policies().count()).finish()
    }
}

/// The policies that can apply to one route and action: a slice of the whole set, so that
/// policies written for other routes or actions cost nothing at evaluation.
#[derive(Clone, Debug)]
pub struct Slice {
    policies: PolicySet,
    action: EntityUid,
    /// `Route`, or `Audience` for the token service's decisions.
    resource_type: EntityTypeName,
}

/// The outcome of a Cedar evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed: some policy permits, none forbids, and nothing failed to evaluate.
    pub allowed: bool,
    /// Reason code: `policy_permit`, `policy_forbid`, `policy_no_permit` or `policy_error`.
    pub code: &'static str,
    /// The ids of the policies that decided (the permits for an allow, the forbids for a deny).
    pub policies: Vec<String>,
    /// Evaluation errors, each naming its policy. Any error denies.
    pub errors: Vec<String>,
}

impl Verdict {
    fn error(message: String) -> Verdict {
        Verdict { allowed: false, code: "policy_error", policies: Vec::new(), errors: vec![message] }
    }
}

impl Policies {
    /// Reads, parses and validates the policies (strictly, against the schema) and the entity
    /// data. Errors name the file and, where known, the line.
    pub fn load(cfg: &CedarConfig, shared: &AuthorizationConfig) -> Result<Policies, String> {
        let schema = match &cfg.schema {
            None => schema_from_str(DEFAULT_SCHEMA, Path::new("<built-in schema>"))?,
            Some(path) => {
                let text = read(path)?;
                schema_from_str(&text, path)?
            }
        };

        let mut all = PolicySet::new();
        let mut sources: Vec<(PathBuf, String)> = Vec::new();
        // Where each policy starts: its source file (index in `sources`) and byte offset.
        let mut origin: HashMap<String, (usize, usize)> = HashMap::new();
        for path in policy_files(&cfg.policies)? {
            let text = read(&path)?;
            let set = PolicySet::from_str(&text).map_err(|e| located(&path, &text, &e))?;
            // Ids: the `@id("...")` annotation, else `file:line`.
            let mut policies: Vec<_> = set.policies().collect();
            policies.sort_by_key(|p| p.id().to_string().trim_start_matches("policy").parse::<usize>().unwrap_or(0));
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut from = 0;
            for p in policies {
                let src = p.to_string();
                let offset = text[from..].find(src.as_str()).map(|i| i + from).unwrap_or(from);
                from = offset + src.len().min(text.len() - offset);
                let id = match p.annotation("id") {
                    Some(id) => id.to_string(),
                    None => format!("{name}:{}", line_of(&text, offset)),
                };
                all.add(p.new_id(PolicyId::new(&id)))
                    .map_err(|e| format!("{}: policy `{id}`: {e} (ids must be unique)", path.display()))?;
                origin.insert(id, (sources.len(), offset));
            }
            sources.push((path, text));
        }

        let validation = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        if let Some(e) = validation.validation_errors().next() {
            let id = e.policy_id().to_string();
            // Every policy in `all` came from a source; the label, when there is one, points
            // into that source's text (each file is parsed on its own).
            let &(source, start) = origin.get(&id).unwrap_or(&(0, 0));
            let (path, text) = &sources[source];
            let at = miette::Diagnostic::labels(e).and_then(|mut l| l.next()).map_or(start, |l| l.offset());
            return Err(format!(
                "{}:{}: policy `{id}` does not validate against the schema: {e}",
                path.display(),
                line_of(text, at.min(text.len()))
            ));
        }

        let mut data: Vec<Entity> = Vec::new();
        if let Some(path) = &cfg.entities {
            let text = read(path)?;
            let entities = Entities::from_json_str(&text, Some(&schema))
                .map_err(|e| format!("{}: {}", path.display(), flatten(&e)))?;
            data.extend(entities.iter().cloned());
        }
        let actions = schema.action_entities().map_err(|e| format!("schema actions: {}", flatten(&e)))?;
        data.extend(actions.iter().cloned());
        let data = Entities::from_entities(data, None).map_err(|e| format!("entity data: {}", flatten(&e)))?;

        static GENERATION: AtomicU64 = AtomicU64::new(1);
        Ok(Policies {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            all,
            data,
            authorizer: Authorizer::new(),
            roles_claim: ClaimPath::new(&shared.roles_claim),
            groups_claim: ClaimPath::new(&shared.groups_claim),
            route_type: type_name("Route"),
            audience_type: type_name("Audience"),
            action_type: type_name("Action"),
            types: Types {
                role: type_name("Role"),
                group: type_name("Group"),
                user: type_name("User"),
                client: type_name("Client"),
                workload: type_name("Workload"),
                anonymous: EntityUid::from_type_name_and_id(type_name("Anonymous"), EntityId::new("anonymous")),
            },
        })
    }

    /// The uid of an action by name.
    fn action_uid(&self, action: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.action_type.clone(), EntityId::new(action))
    }

    /// The policies that may apply to `route` and `action`. A policy is left out only when
    /// its scope cannot match: its resource is another route (or a group this route is not
    /// in), or its action is another one (and not a group of this one).
    pub fn slice(&self, route: &str, action: &str) -> Slice {
        self.slice_of(self.route_type.clone(), route, action)
    }

    /// The policies that may apply when the token service issues a token of `audience`
    /// (resource `Audience::"<audience>"`) for `action` (`token_exchange`,
    /// `client_credentials`).
    pub fn audience_slice(&self, audience: &str, action: &str) -> Slice {
        self.slice_of(self.audience_type.clone(), audience, action)
    }

    fn slice_of(&self, resource_type: EntityTypeName, route: &str, action: &str) -> Slice {
        let route_uid = EntityUid::from_type_name_and_id(resource_type.clone(), EntityId::new(route));
        let action_uid = self.action_uid(action);
        let route_up = self.ancestors(&route_uid);
        let action_up = self.ancestors(&action_uid);
        let mut policies = PolicySet::new();
        for p in self.all.policies() {
            let resource_may = match p.resource_constraint() {
                ResourceConstraint::Any => true,
                ResourceConstraint::Eq(uid) => uid == route_uid,
                ResourceConstraint::In(uid) => route_up.contains(&uid),
                ResourceConstraint::Is(t) => t == resource_type,
                ResourceConstraint::IsIn(t, uid) => t == resource_type && route_up.contains(&uid),
            };
            let action_may = match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => uid == action_uid,
                ActionConstraint::In(uids) => uids.iter().any(|u| action_up.contains(u)),
            };
            if resource_may && action_may {
                // Ids are unique in `all`, so adding cannot fail.
                let _ = policies.add(p.clone());
            }
        }
        Slice { policies, action: action_uid, resource_type }
    }

    /// `uid` and its ancestors in the entity data.
    fn ancestors(&self, uid: &EntityUid) -> HashSet<EntityUid> {
        let mut set: HashSet<EntityUid> = self.data.ancestors(uid).into_iter().flatten().cloned().collect();
        set.insert(uid.clone());
        set
    }

    /// Decides a request. Default deny: no permit, a forbid, or any evaluation error denies.
    pub fn decide(&self, slice: &Slice, input: &Input<'_>) -> Verdict {
        let context = match self.context(input) {
            Ok(c) => c,
            Err(e) => return Verdict::error(e),
        };
        // The entities depend on the principal, the resource and the action only: a worker
        // keeps those of its last request and reuses them while the same credential (the same
        // shared principal) calls the same resource, which skips building the entities and
        // their transitive closure, most of a decision's cost. The context (time, address,
        // TLS) is built for every request.
        let response = MEMO.with_borrow_mut(|memo| {
            let judge = |m: &Memo| {
                let request =
                    Request::new(m.principal_uid.clone(), slice.action.clone(), m.resource_uid.clone(), context, None)
                        .map_err(|e| flatten(&e))?;
                Ok::<_, String>(self.authorizer.is_authorized(&request, &slice.policies, &m.entities))
            };
            if let Some(m) = memo.get(input.principal, ()).filter(|m| m.matches(self.generation, slice, input)) {
                return judge(m);
            }
            let (principal_uid, resource_uid, entities) = self.entities(slice, input)?;
            let kept = memo.insert(
                input.principal,
                (),
                Memo {
                    generation: self.generation,
                    action: slice.action.clone(),
                    route: input.route.to_string(),
                    host: input.host.to_string(),
                    path: input.path.to_string(),
                    method: input.method.to_string(),
                    params: input.params.to_vec(),
                    principal_uid,
                    resource_uid,
                    entities,
                },
            );
            judge(kept)
        });
        let response = match response {
            Ok(r) => r,
            Err(e) => return Verdict::error(e),
        };
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| flatten(e)).collect();
        let mut policies: Vec<String> = diagnostics.reason().map(PolicyId::to_string).collect();
        policies.sort();
        if !errors.is_empty() {
            return Verdict { allowed: false, code: "policy_error", policies, errors };
        }
        match response.decision() {
            Decision::Allow => Verdict { allowed: true, code: "policy_permit", policies, errors },
            Decision::Deny if policies.is_empty() => {
                Verdict { allowed: false, code: "policy_no_permit", policies, errors }
            }
            Decision::Deny => Verdict { allowed: false, code: "policy_forbid", policies, errors },
        }
    }

    /// The principal, the resource and the entities the request can see.
    fn entities(&self, slice: &Slice, input: &Input<'_>) -> Result<(EntityUid, EntityUid, Entities), String> {
        // The principal's part (its entity, the entity data above it, their closure) is kept
        // per worker for its recent credentials: a caller's next request, on whatever path or
        // route, adds only the resource's part to it.
        let (principal_uid, base) = PRINCIPALS.with_borrow_mut(|cache| {
            if let Some(m) = cache.get(input.principal, ()).filter(|m| m.generation == self.generation) {
                return Ok((m.uid.clone(), m.entities.clone()));
            }
            let (uid, principal, parents) = self.principal_entity(input.principal)?;
            let mut seen: HashSet<EntityUid> = HashSet::new();
            let mut entities = vec![principal];
            self.add_entities(parents, &mut seen, &mut entities);
            let entities = Entities::from_entities(entities, None).map_err(|e| flatten(&e))?;
            let m = cache.insert(input.principal, (), PrincipalMemo { generation: self.generation, uid, entities });
            Ok::<_, String>((m.uid.clone(), m.entities.clone()))
        })?;

        let resource_uid = EntityUid::from_type_name_and_id(slice.resource_type.clone(), EntityId::new(input.route));
        let resource_parents = self.parents(&resource_uid);
        let resource = Entity::new_with_tags(
            resource_uid.clone(),
            [
                ("host".to_string(), RestrictedExpression::new_string(input.host.to_string())),
                ("path".to_string(), RestrictedExpression::new_string(input.path.to_string())),
                ("method".to_string(), RestrictedExpression::new_string(input.method.to_string())),
            ],
            resource_parents.iter().cloned(),
            input.params.iter().map(|(k, v)| (k.to_string(), RestrictedExpression::new_string(v.to_string()))),
        )
        .map_err(|e| flatten(&e))?;

        // The request sees the principal, the route, and the entity data above them; what the
        // principal's part already holds is not added twice.
        let mut seen: HashSet<EntityUid> = HashSet::new();
        let mut entities = vec![resource];
        self.add_entities(resource_parents, &mut seen, &mut entities);
        self.add_entities(vec![slice.action.clone()], &mut seen, &mut entities);
        // (Entity data only: the resource itself is never replaced by a copy in the data.)
        entities.retain(|e| e.uid() == resource_uid || base.get(&e.uid()).is_none());
        let entities = base.add_entities(entities, None).map_err(|e| flatten(&e))?;
        Ok((principal_uid, resource_uid, entities))
    }

    /// The request's context. Its values change by the second at most: a worker keeps the
    /// context of its last decision and reuses it for a request with the same values (the same
    /// second, client address, TLS facts, authentication method, token age and risk), as
    /// building one evaluates every value with Cedar's interpreter.
    fn context(&self, input: &Input<'_>) -> Result<Context, String> {
        let p: &Principal = input.principal;
        let secs = input.now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let key = ContextKey {
            secs,
            client_ip: input.client_ip,
            tls: input.tls,
            mtls: input.mtls,
            auth_method: p.method.as_str(),
            token_age: p.issued_at.map(|iat| secs.saturating_sub(iat)),
            risk: input.risk,
        };
        CONTEXT.with_borrow_mut(|last| {
            if let Some((k, c)) = last.as_ref()
                && *k == key
            {
                return Ok(c.clone());
            }
            let context = Self::build_context(&key)?;
            *last = Some((key, context.clone()));
            Ok(context)
        })
    }

    fn build_context(key: &ContextKey) -> Result<Context, String> {
        let secs = key.secs;
        let mut context = vec![
            ("client_ip".to_string(), ip_expression(key.client_ip)),
            // Plain numbers rather than a `datetime`: building a datetime value parses text with
            // a regex, which measured a sixth of a decision.
            ("time".to_string(), RestrictedExpression::new_long(secs as i64)),
            ("time_of_day".to_string(), RestrictedExpression::new_long((secs % 86_400) as i64)),
            // ISO weekday, 1 = Monday (1970-01-01 was a Thursday).
            ("weekday".to_string(), RestrictedExpression::new_long(((secs / 86_400 + 3) % 7 + 1) as i64)),
            ("tls".to_string(), RestrictedExpression::new_bool(key.tls)),
            ("mtls".to_string(), RestrictedExpression::new_bool(key.mtls)),
            ("auth_method".to_string(), RestrictedExpression::new_string(key.auth_method.to_string())),
        ];
        if let Some(age) = key.token_age {
            context.push(("token_age".to_string(), RestrictedExpression::new_long(age as i64)));
        }
        if let Some(risk) = key.risk {
            context.push(("risk".to_string(), RestrictedExpression::new_long(risk)));
        }
        Context::from_pairs(context).map_err(|e| flatten(&e))
    }

    /// Adds the entities `todo` names and their ancestors, where the entity data has them
    /// (each once): roles and groups from a token may have parents in the data too.
    fn add_entities(&self, mut todo: Vec<EntityUid>, seen: &mut HashSet<EntityUid>, out: &mut Vec<Entity>) {
        while let Some(uid) = todo.pop() {
            if !seen.insert(uid.clone()) {
                continue;
            }
            if let Some(found) = self.data.get(&uid) {
                todo.extend(self.data.ancestors(&uid).into_iter().flatten().cloned());
                out.push(found.clone());
            }
        }
    }

    /// The ancestors of `uid` in the entity data (closed transitively at load).
    fn parents(&self, uid: &EntityUid) -> Vec<EntityUid> {
        self.data.ancestors(uid).into_iter().flatten().cloned().collect()
    }

    /// The principal as a Cedar entity (see the built-in schema).
    fn principal_entity(&self, p: &Principal) -> Result<(EntityUid, Entity, Vec<EntityUid>), String> {
        let t = &self.types;
        let (kind, id) = match p.kind {
            PrincipalKind::Anonymous => {
                let uid = t.anonymous.clone();
                return Ok((uid.clone(), Entity::with_uid(uid), Vec::new()));
            }
            PrincipalKind::User => (&t.user, p.subject.as_deref()),
            PrincipalKind::Client => (&t.client, p.client_id.as_deref().or(p.subject.as_deref())),
            PrincipalKind::Workload => (&t.workload, p.spiffe_id.as_deref().or(p.subject.as_deref())),
        };
        let id = id.ok_or_else(|| format!("the {kind} has no identifier"))?;
        let uid = EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id));
        let string = |s: &str| RestrictedExpression::new_string(s.to_string());
        let set = |it: &mut dyn Iterator<Item = &str>| RestrictedExpression::new_set(it.map(string));
        let roles: Vec<&str> = self.roles_claim.values(p).collect();
        let groups: Vec<&str> = self.groups_claim.values(p).collect();
        let mut attrs = vec![
            ("scopes".to_string(), set(&mut p.scopes.iter().map(|s| &**s))),
            ("roles".to_string(), set(&mut roles.iter().copied())),
            ("groups".to_string(), set(&mut groups.iter().copied())),
            ("auth_method".to_string(), string(p.method.as_str())),
        ];
        let optional = [
            ("sub", p.subject.as_deref()),
            ("iss", p.issuer.as_deref()),
            ("client_id", p.client_id.as_deref()),
            ("spiffe_id", p.spiffe_id.as_deref()),
            ("trust_domain", p.trust_domain()),
            ("plan", p.consumer.as_ref().and_then(|c| c.plan.as_deref())),
        ];
        attrs.extend(optional.into_iter().filter_map(|(k, v)| Some((k.to_string(), string(v?)))));
        let mut parents = self.parents(&uid);
        parents.extend(roles.iter().map(|r| EntityUid::from_type_name_and_id(t.role.clone(), EntityId::new(r))));
        parents.extend(groups.iter().map(|g| EntityUid::from_type_name_and_id(t.group.clone(), EntityId::new(g))));
        let tags = p.claims.iter().flat_map(|c| c.map().iter()).map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), RestrictedExpression::new_string(v))
        });
        let entity =
            Entity::new_with_tags(uid.clone(), attrs, parents.iter().cloned(), tags).map_err(|e| flatten(&e))?;
        Ok((uid, entity, parents))
    }
}

thread_local! {
    /// The worker's last decision's entities, by its principal.
    static MEMO: RefCell<ByPrincipal<Memo>> = RefCell::new(ByPrincipal::new(1));
    /// The principals' parts of the entities.
    static PRINCIPALS: RefCell<ByPrincipal<PrincipalMemo>> = RefCell::new(ByPrincipal::new(PRINCIPALS_KEPT));
    static CONTEXT: RefCell<Option<(ContextKey, Context)>> = const { RefCell::new(None) };
}

/// Everything a request's context is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ContextKey {
    secs: u64,
    client_ip: std::net::IpAddr,
    tls: bool,
    mtls: bool,
    auth_method: &'static str,
    token_age: Option<u64>,
    risk: Option<i64>,
}

/// Callers whose part of the entities a worker keeps (oldest out first). Each entry holds the
/// principal (its claims, shared with the token cache) and its entity (the claims again, as
/// tags): a few KiB for usual tokens.
const PRINCIPALS_KEPT: usize = 256;

/// A principal's part of the entities: its entity and the entity data above it, closed.
struct PrincipalMemo {
    generation: u64,
    uid: EntityUid,
    entities: Entities,
}

/// The entities of a worker's last decision, and what they were built from besides its
/// principal (the key they are kept under).
struct Memo {
    generation: u64,
    action: EntityUid,
    route: String,
    host: String,
    path: String,
    method: String,
    params: Vec<(Arc<str>, Box<str>)>,
    principal_uid: EntityUid,
    resource_uid: EntityUid,
    entities: Entities,
}

impl Memo {
    fn matches(&self, generation: u64, slice: &Slice, input: &Input<'_>) -> bool {
        self.generation == generation
            && self.route == input.route
            && self.path == input.path
            && self.method == input.method
            && self.host == input.host
            && self.params[..] == input.params[..]
            && self.action == slice.action
            && self.resource_uid.type_name() == &slice.resource_type
    }
}

/// `ip("...")` for an address. Kept per thread for the last address seen: building the
/// expression parses the function's name with Cedar's parser, which measured as much as the
/// rest of the context.
fn ip_expression(ip: std::net::IpAddr) -> RestrictedExpression {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, RestrictedExpression)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, expr)) if *seen == ip => expr.clone(),
        _ => {
            let expr = RestrictedExpression::new_ip(ip.to_string());
            *last = Some((ip, expr.clone()));
            expr
        }
    })
}

fn type_name(name: &str) -> EntityTypeName {
    // Names of the built-in schema: always valid.
    EntityTypeName::from_str(name).unwrap_or_else(|_| unreachable!("invalid built-in type name {name}"))
}

fn schema_from_str(text: &str, path: &Path) -> Result<Schema, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return Schema::from_json_str(text).map_err(|e| format!("{}: {}", path.display(), flatten(&e)));
    }
    match Schema::from_cedarschema_str(text) {
        Ok((schema, _warnings)) => Ok(schema),
        Err(e) => Err(located(path, text, &e)),
    }
}

/// The policy files: files as given, folders as their `*.cedar` files in name order.
fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cedar") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `file:line: message` from a diagnostic whose labels point into `text`.
fn located(path: &Path, text: &str, e: &(dyn miette::Diagnostic + 'static)) -> String {
    let line = e.labels().and_then(|mut l| l.next()).map(|l| line_of(text, l.offset().min(text.len())));
    match line {
        Some(line) => format!("{}:{line}: {}", path.display(), flatten(e)),
        None => format!("{}: {}", path.display(), flatten(e)),
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// An error and its causes on one line.
fn flatten(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use portcullis_config::{AuthorizationConfig, CedarConfig};
    use portcullis_core::{AuthnMethod, Principal, PrincipalKind};

    use crate::{Input, Policies, RouteAuthz};

    fn user(name: &str, roles: &[&str]) -> Arc<Principal> {
        let mut p = Principal::new(PrincipalKind::User, AuthnMethod::Jwt);
        p.subject = Some(Arc::from(name));
        let claims = serde_json::json!({ "sub": name, "roles": roles });
        p.claims = Some(portcullis_core::Claims::from_map(claims.as_object().cloned().unwrap_or_default()));
        Arc::new(p)
    }

    fn route(text: &str, tag: &str) -> RouteAuthz {
        let file = std::env::temp_dir().join(format!("portcullis-memo-{}-{tag}.cedar", std::process::id()));
        std::fs::write(&file, text).unwrap();
        let shared = AuthorizationConfig::default();
        let cfg = CedarConfig { policies: vec![file.clone()], schema: None, entities: None };
        let policies = Arc::new(Policies::load(&cfg, &shared).unwrap());
        let _ = std::fs::remove_file(file);
        RouteAuthz::new("orders", None, &shared, Some(&policies), false)
    }

    fn allowed(r: &RouteAuthz, p: &Arc<Principal>, path: &str) -> bool {
        let params = [(Arc::from("id"), Box::from(path.rsplit('/').next().unwrap_or_default()))];
        r.decide(&Input {
            principal: p,
            route: "orders",
            method: "GET",
            host: "api.example",
            path,
            params: &params,
            client_ip: "127.0.0.1".parse().unwrap(),
            now: SystemTime::now(),
            tls: false,
            mtls: false,
            risk: None,
        })
        .allowed
    }

    /// Replay is told of every claim a policy may read as a tag, however the call is spaced.
    #[test]
    fn the_tags_policies_read_are_found() {
        let text = r#"
permit(principal, action, resource) when { principal.hasTag("dept") && principal.getTag ("dept") == "ops" };
permit(principal, action, resource) when { principal.hasTag("email") && principal.getTag(
    "email") like "*@example.com" };
forbid(principal, action, resource) when { principal.hasTag  ("locked") };
"#;
        let file = std::env::temp_dir().join(format!("portcullis-tags-{}.cedar", std::process::id()));
        std::fs::write(&file, text).unwrap();
        let cfg = CedarConfig { policies: vec![file.clone()], schema: None, entities: None };
        let policies = Policies::load(&cfg, &AuthorizationConfig::default()).unwrap();
        let _ = std::fs::remove_file(file);
        let (names, any) = policies.tags_read();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["dept", "email", "locked"]);
        assert!(!any);
    }

    /// The per-thread context memo never carries one request's context into another's.
    #[test]
    fn the_context_memo_follows_every_context_value() {
        let r = route(
            r#"permit(principal, action, resource) when { context.tls && context.client_ip == ip("10.0.0.1") };"#,
            "c",
        );
        let alice = user("alice", &[]);
        let decide = |tls: bool, ip: &str| {
            r.decide(&Input {
                principal: &alice,
                route: "orders",
                method: "GET",
                host: "api.example",
                path: "/orders/1",
                params: &[],
                client_ip: ip.parse().unwrap(),
                now: SystemTime::now(),
                tls,
                mtls: false,
                risk: None,
            })
            .allowed
        };
        for _ in 0..2 {
            assert!(decide(true, "10.0.0.1"));
            assert!(!decide(false, "10.0.0.1"));
            assert!(decide(true, "10.0.0.1"));
            assert!(!decide(true, "10.0.0.2"));
        }
    }

    /// The per-thread entity memo never carries one request's facts into another's decision:
    /// other principals, other resources and reloaded policies are decided afresh.
    #[test]
    fn the_entity_memo_follows_principal_resource_and_policies() {
        let readers = route(
            r#"permit(principal in Role::"reader", action, resource) when { resource.path != "/orders/secret" };"#,
            "a",
        );
        let (alice, bob) = (user("alice", &["reader"]), user("bob", &[]));
        for _ in 0..2 {
            assert!(allowed(&readers, &alice, "/orders/1"));
            assert!(!allowed(&readers, &bob, "/orders/1"), "bob is not alice");
            assert!(allowed(&readers, &alice, "/orders/1"));
            assert!(!allowed(&readers, &alice, "/orders/secret"), "another path is another resource");
        }
        // One caller working through resources: the principal's part is reused, the
        // resource's (its path parameters here) never.
        let seven = route(
            r#"permit(principal in Role::"reader", action, resource) when { resource.hasTag("id") && resource.getTag("id") == "7" };"#,
            "t",
        );
        for _ in 0..2 {
            assert!(allowed(&seven, &alice, "/orders/7"));
            assert!(!allowed(&seven, &alice, "/orders/8"), "another resource's parameters");
            assert!(!allowed(&seven, &bob, "/orders/7"), "another caller's roles");
            assert!(allowed(&seven, &alice, "/orders/7"));
        }
        // Many callers interleaved, more than a worker keeps: each is judged by its own roles.
        let callers: Vec<(Arc<Principal>, bool)> = (0..super::PRINCIPALS_KEPT + 44)
            .map(|i| (user(&format!("u{i}"), if i % 3 == 0 { &["reader"] } else { &[] }), i % 3 == 0))
            .collect();
        for round in 0..2 {
            for (p, reader) in callers.iter().rev().skip(round) {
                assert_eq!(allowed(&seven, p, "/orders/7"), *reader);
            }
        }
        // The same principal, and a principal equal in every field but another credential.
        let alice_again = user("alice", &["reader"]);
        assert!(allowed(&readers, &alice_again, "/orders/1"));
        // Reloaded policies (a new load, whatever its text) are judged with their own data.
        let nobody = route(r#"forbid(principal, action, resource);"#, "b");
        assert!(!allowed(&nobody, &alice, "/orders/1"));
        assert!(allowed(&readers, &alice, "/orders/1"));
    }
}
