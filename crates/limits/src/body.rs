//! What a route accepts as a request body: its media types, and the shape of JSON.

use portcullis_config::RouteConfig;

use crate::json::JsonLimits;

/// A route's body rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyRules {
    /// Allowed media types (lower case): `type/subtype`, or `type/*`. None: any.
    types: Option<Box<[Box<str>]>>,
    /// JSON limits.
    pub json: Option<JsonLimits>,
}

/// What to do with a body whose `Content-Type` is `media`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it as it is.
    Pass,
    /// Check it against the JSON limits.
    CheckJson(JsonLimits),
    /// Refuse it (`415`).
    Refuse,
}

impl BodyRules {
    /// The rules of `route`, if it has any.
    pub fn of(route: &RouteConfig) -> Option<BodyRules> {
        if route.content_types.is_none() && route.json_limits.is_none() {
            return None;
        }
        Some(BodyRules {
            types: route.content_types.as_ref().map(|t| t.iter().map(|t| t.to_ascii_lowercase().into()).collect()),
            json: route.json_limits.as_ref().map(|j| JsonLimits {
                max_depth: j.max_depth,
                max_keys: j.max_keys,
                max_string: j.max_string_length,
                max_items: j.max_array_length,
                max_values: j.max_members,
            }),
        })
    }

    /// The verdict on a body of media type `media` (the `Content-Type` field without its
    /// parameters), or of none.
    pub fn judge(&self, media: Option<&str>) -> Verdict {
        let Some(media) = media.map(|m| m.trim().to_ascii_lowercase()) else { return Verdict::Refuse };
        let json = is_json(&media);
        let listed = match &self.types {
            Some(types) => types.iter().any(|t| match t.strip_suffix("/*") {
                Some(ty) => media.split_once('/').is_some_and(|(m, _)| m == ty),
                None => **t == *media,
            }),
            // Without a list, a route with JSON limits takes JSON only.
            None => json,
        };
        match (listed, self.json) {
            (false, _) => Verdict::Refuse,
            (true, Some(limits)) if json => Verdict::CheckJson(limits),
            (true, _) => Verdict::Pass,
        }
    }
}

/// `application/json`, or any `+json` type (`application/problem+json`).
pub fn is_json(media: &str) -> bool {
    media == "application/json" || media.split_once('/').is_some_and(|(_, sub)| sub.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> BodyRules {
        let route: RouteConfig = serde_saphyr::from_str(&format!("id: r\nupstream: echo\n{yaml}")).unwrap();
        BodyRules::of(&route).unwrap()
    }

    #[test]
    fn json_limits_alone_take_json_only() {
        let r = rules("json_limits: {}\n");
        assert!(matches!(r.judge(Some("application/json")), Verdict::CheckJson(_)));
        assert!(matches!(r.judge(Some("Application/JSON ")), Verdict::CheckJson(_)));
        assert!(matches!(r.judge(Some("application/merge-patch+json")), Verdict::CheckJson(_)));
        assert_eq!(r.judge(Some("text/plain")), Verdict::Refuse);
        assert_eq!(r.judge(Some("application/x-www-form-urlencoded")), Verdict::Refuse);
        assert_eq!(r.judge(None), Verdict::Refuse);
    }

    #[test]
    fn a_list_of_types_with_and_without_json_limits() {
        let r = rules("content_types: [application/json, text/*]\n");
        assert_eq!(r.judge(Some("application/json")), Verdict::Pass);
        assert_eq!(r.judge(Some("text/csv")), Verdict::Pass);
        assert_eq!(r.judge(Some("application/xml")), Verdict::Refuse);
        assert_eq!(r.judge(Some("texts/x")), Verdict::Refuse);
        let r = rules("content_types: [application/json, multipart/form-data]\njson_limits: {max_depth: 4}\n");
        assert!(matches!(r.judge(Some("application/json")), Verdict::CheckJson(l) if l.max_depth == 4));
        assert_eq!(r.judge(Some("multipart/form-data")), Verdict::Pass);
        assert_eq!(r.judge(Some("application/problem+json")), Verdict::Refuse);
    }
}
