//! Usage reports: `GET /usage` on the admin listener and `portcullis usage export`, one
//! query language for both.
//!
//! `?from=&to=` (RFC 3339 times or `YYYY-MM-DD` dates, UTC; hours are whole: `from` is
//! rounded down, `to` up; by default the current month to now), `consumer=`, `route=`,
//! `plan=` (exact filters), `group_by=` (a list of `consumer`, `plan`, `route`, `status`,
//! `hour`, `day`, `month`; `consumer,route` by default) and `format=json|csv`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use jiff::Timestamp;
use jiff::civil::Date;
use portcullis_core::Problem;
use portcullis_http::body::ResponseBody;
use portcullis_state::usage::{Counts, Series};
use serde_json::{Value, json};

/// The longest span one query may cover.
const MAX_HOURS: u64 = 800 * 24;

/// What a usage report may be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The API consumer, subject or client (`-` for anonymous callers).
    Consumer,
    /// The caller's plan (empty for none).
    Plan,
    /// The route.
    Route,
    /// The status class (`2xx`).
    Status,
    /// The UTC hour.
    Hour,
    /// The UTC day.
    Day,
    /// The UTC month.
    Month,
}

impl Dim {
    fn parse(s: &str) -> Option<Dim> {
        Some(match s {
            "consumer" => Dim::Consumer,
            "plan" => Dim::Plan,
            "route" => Dim::Route,
            "status" => Dim::Status,
            "hour" => Dim::Hour,
            "day" => Dim::Day,
            "month" => Dim::Month,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Dim::Consumer => "consumer",
            Dim::Plan => "plan",
            Dim::Route => "route",
            Dim::Status => "status",
            Dim::Hour => "hour",
            Dim::Day => "day",
            Dim::Month => "month",
        }
    }

    /// The value of this dimension for `s`.
    fn of(self, s: &Series) -> String {
        match self {
            Dim::Consumer => s.consumer.to_string(),
            Dim::Plan => s.plan.to_string(),
            Dim::Route => s.route.to_string(),
            Dim::Status => format!("{}xx", s.class),
            Dim::Hour => hour_text(s.hour, "%Y-%m-%dT%H:00:00Z"),
            Dim::Day => hour_text(s.hour, "%Y-%m-%d"),
            Dim::Month => hour_text(s.hour, "%Y-%m"),
        }
    }

    /// Whether values are names that came from callers or the config (CSV guards them).
    fn is_text(self) -> bool {
        matches!(self, Dim::Consumer | Dim::Plan | Dim::Route)
    }
}

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `text/csv` (RFC 4180), ready for a billing system.
    Csv,
}

/// A usage query.
#[derive(Clone, Debug)]
pub struct Query {
    /// The first hour (hours since the epoch).
    pub from: u64,
    /// The hour after the last.
    pub to: u64,
    consumer: Option<String>,
    route: Option<String>,
    plan: Option<String>,
    group_by: Vec<Dim>,
    /// How to write the report.
    pub format: Format,
}

impl Query {
    /// Reads a query string (`from=...&group_by=...`); `now` sets the defaults. `Err` says
    /// what is wrong, for a `400`.
    pub fn parse(query: &str, now: Timestamp) -> Result<Query, String> {
        let now_hour = u64::try_from(now.as_second()).unwrap_or(0) / 3600;
        let month_start = now
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .first_of_month()
            .and_then(|d| d.start_of_day())
            .map_err(|e| e.to_string())?;
        let mut q = Query {
            from: u64::try_from(month_start.timestamp().as_second()).unwrap_or(0) / 3600,
            to: now_hour + 1,
            consumer: None,
            route: None,
            plan: None,
            group_by: vec![Dim::Consumer, Dim::Route],
            format: Format::Json,
        };
        let mut seen = Vec::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if seen.contains(&k) {
                return Err(format!("`{k}` is given twice"));
            }
            seen.push(k.clone());
            match &*k {
                "from" => q.from = time(&v, false).map_err(|e| format!("from: {e}"))?,
                "to" => q.to = time(&v, true).map_err(|e| format!("to: {e}"))?,
                "consumer" => q.consumer = Some(v.into_owned()),
                "route" => q.route = Some(v.into_owned()),
                "plan" => q.plan = Some(v.into_owned()),
                "group_by" => {
                    q.group_by = Vec::new();
                    for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                        let dim = Dim::parse(d).ok_or_else(|| {
                            format!("group_by: `{d}` is not one of consumer, plan, route, status, hour, day, month")
                        })?;
                        if !q.group_by.contains(&dim) {
                            q.group_by.push(dim);
                        }
                    }
                }
                "format" => {
                    q.format = match &*v {
                        "json" => Format::Json,
                        "csv" => Format::Csv,
                        other => return Err(format!("format: `{other}` is not json or csv")),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown parameter `{other}` (from, to, consumer, route, plan, group_by, format)"
                    ));
                }
            }
        }
        if q.from >= q.to {
            return Err("`from` must be before `to`".into());
        }
        if q.to - q.from > MAX_HOURS {
            return Err("at most 800 days at once".into());
        }
        Ok(q)
    }

    /// `rows`, filtered and summed by the query's groups, in order.
    pub fn report(&self, rows: Vec<(Series, Counts)>) -> Vec<(Vec<String>, Counts)> {
        let keep = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let mut groups: BTreeMap<Vec<String>, Counts> = BTreeMap::new();
        for (s, c) in rows {
            if !(self.from..self.to).contains(&s.hour)
                || !keep(&self.consumer, &s.consumer)
                || !keep(&self.route, &s.route)
                || !keep(&self.plan, &s.plan)
            {
                continue;
            }
            groups.entry(self.group_by.iter().map(|d| d.of(&s)).collect()).or_default().add(&c);
        }
        groups.into_iter().collect()
    }

    /// The report as the query's format asks: the body and its media type.
    pub fn render(&self, rows: &[(Vec<String>, Counts)]) -> (String, &'static str) {
        match self.format {
            Format::Json => (self.json(rows).to_string(), "application/json"),
            Format::Csv => (self.csv(rows), "text/csv; charset=utf-8; header=present"),
        }
    }

    fn json(&self, rows: &[(Vec<String>, Counts)]) -> Value {
        let hour = |h: u64| hour_text(h, "%Y-%m-%dT%H:00:00Z");
        let rows: Vec<Value> = rows
            .iter()
            .map(|(key, c)| {
                let mut row = serde_json::Map::new();
                for (d, v) in self.group_by.iter().zip(key) {
                    row.insert(d.name().into(), Value::String(v.clone()));
                }
                row.insert("requests".into(), c.requests.into());
                row.insert("request_bytes".into(), c.request_bytes.into());
                row.insert("response_bytes".into(), c.response_bytes.into());
                Value::Object(row)
            })
            .collect();
        json!({
            "from": hour(self.from),
            "to": hour(self.to),
            "group_by": self.group_by.iter().map(|d| d.name()).collect::<Vec<_>>(),
            "rows": rows,
        })
    }

    fn csv(&self, rows: &[(Vec<String>, Counts)]) -> String {
        let mut out = String::new();
        for d in &self.group_by {
            out.push_str(d.name());
            out.push(',');
        }
        out.push_str("requests,request_bytes,response_bytes\r\n");
        for (key, c) in rows {
            for (d, v) in self.group_by.iter().zip(key) {
                csv_field(&mut out, v, d.is_text());
                out.push(',');
            }
            let _ = write!(out, "{},{},{}\r\n", c.requests, c.request_bytes, c.response_bytes);
        }
        out
    }
}

/// The start of hour `hour` (hours since the epoch, UTC) in `format`.
fn hour_text(hour: u64, format: &str) -> String {
    let start = Timestamp::from_second(i64::try_from(hour * 3600).unwrap_or(0)).unwrap_or_default();
    start.strftime(format).to_string()
}

/// An hour from a query: an RFC 3339 time or a date (UTC midnight); `up` rounds a time
/// within an hour up to the next.
fn time(text: &str, up: bool) -> Result<u64, String> {
    let secs = if let Ok(t) = text.parse::<Timestamp>() {
        t.as_second()
    } else if let Ok(d) = text.parse::<Date>() {
        format!("{d}T00:00:00Z").parse::<Timestamp>().map_err(|e| e.to_string())?.as_second()
    } else {
        return Err(format!("`{text}` is not a time such as 2026-12-01T00:00:00Z or a date such as 2026-12-01"));
    };
    let secs = u64::try_from(secs).map_err(|_| format!("`{text}` is before 1970"))?;
    Ok(if up { secs.div_ceil(3600) } else { secs / 3600 })
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break. A name
/// that a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a
/// leading `'` (OWASP's advice against CSV injection): consumer names come from callers.
fn csv_field(out: &mut String, v: &str, guard: bool) {
    let formula = guard && v.starts_with(['=', '+', '-', '@', '\t', '\r']) && v != "-";
    // `;` too: spreadsheets set to it as the separator would split the field there.
    let quote = formula || v.contains([',', ';', '"', '\r', '\n']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for ch in v.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    if quote {
        out.push('"');
    }
}

/// Serves `GET /usage`.
pub async fn serve(
    meter: Option<&portcullis_state::usage::Meter>,
    query: &str,
) -> Result<Response<ResponseBody>, Problem> {
    let q = Query::parse(query, Timestamp::now()).map_err(|e| Problem::bad_request("invalid_usage_query", e))?;
    let Some(meter) = meter else {
        return Err(Problem::new(StatusCode::NOT_FOUND, "usage_off", "usage metering is off (`usage.enabled: false`)"));
    };
    let rows = meter.query(q.from, q.to).await.map_err(|e| {
        tracing::warn!(error = %e, "usage: a report could not be read");
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", "usage cannot be read now; try again")
            .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
    })?;
    let (body, media) = q.render(&q.report(rows));
    let mut r = Response::new(ResponseBody::full(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(media));
    if q.format == Format::Csv {
        r.headers_mut().insert(CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"usage.csv\""));
    }
    Ok(r)
}

/// `portcullis usage export`: the report of `query` from the usage a config's gateway
/// stored: its journal (`state.path`, or `portcullis.state` beside the config) with the
/// memory backend, or Redis. Counts of a running gateway's last second may not be there yet.
pub fn export(config: &Path, query: &str) -> Result<String, String> {
    let q = Query::parse(query, Timestamp::now())?;
    let loaded = portcullis_config::load_file(config).map_err(|e| e.to_string())?;
    let c = &loaded.config;
    let rows = match c.state.backend {
        portcullis_config::StateBackend::Memory => {
            let default = loaded.file.parent().unwrap_or(Path::new(".")).join("portcullis.state");
            let path = c.state.path.clone().unwrap_or(default);
            portcullis_state::usage::read_journal(&path)?.into_iter().collect()
        }
        portcullis_config::StateBackend::Redis => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let state = portcullis_state::State::build(&c.state).map_err(|(k, e)| format!("state.{k}: {e}"))?;
                state.stored_usage(q.from, q.to).await.map_err(|e| e.to_string())
            })?
        }
    };
    Ok(q.render(&q.report(rows)).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(hour: u64, consumer: &str, route: &str, class: u8) -> Series {
        Series { hour, consumer: consumer.into(), plan: "gold".into(), route: route.into(), class }
    }

    fn counts(n: u64) -> Counts {
        Counts { requests: n, request_bytes: n * 10, response_bytes: n * 100 }
    }

    const NOW: &str = "2026-12-07T22:46:03Z";

    #[test]
    fn defaults_are_this_month_by_consumer_and_route() {
        let q = Query::parse("", NOW.parse().unwrap()).unwrap();
        let dec1: u64 = "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap().as_second() as u64 / 3600;
        assert_eq!(q.from, dec1);
        assert_eq!(q.to, "2026-12-07T23:00:00Z".parse::<Timestamp>().unwrap().as_second() as u64 / 3600);
        assert_eq!(q.group_by, [Dim::Consumer, Dim::Route]);
        assert_eq!(q.format, Format::Json);
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let now: Timestamp = NOW.parse().unwrap();
        for (query, says) in [
            ("from=yesterday", "from:"),
            ("to=2026-13-01", "to:"),
            ("group_by=consumer,color", "color"),
            ("format=xml", "format"),
            ("limit=5", "unknown parameter `limit`"),
            ("from=2026-12-02&to=2026-12-01", "before"),
            ("from=2020-01-01&to=2026-01-01", "800 days"),
            ("route=a&route=b", "twice"),
        ] {
            let e = Query::parse(query, now).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
    }

    #[test]
    fn reports_filter_group_and_sum() {
        let h = "2026-12-07T10:00:00Z".parse::<Timestamp>().unwrap().as_second() as u64 / 3600;
        let rows = vec![
            (series(h, "alice", "orders", 2), counts(3)),
            (series(h + 1, "alice", "orders", 2), counts(2)),
            (series(h + 1, "alice", "orders", 4), counts(1)),
            (series(h, "bob", "orders", 2), counts(7)),
            (series(h, "bob", "admin", 5), counts(1)),
            (series(h + 30, "bob", "orders", 2), counts(100)),
        ];
        let q = Query::parse("from=2026-12-07&to=2026-12-08&group_by=consumer,route", NOW.parse().unwrap()).unwrap();
        let r = q.report(rows.clone());
        assert_eq!(
            r,
            vec![
                (vec!["alice".to_string(), "orders".to_string()], counts(6)),
                (vec!["bob".to_string(), "admin".to_string()], counts(1)),
                (vec!["bob".to_string(), "orders".to_string()], counts(7)),
            ]
        );
        let q = Query::parse(
            "from=2026-12-07T10:30:00Z&to=2026-12-07T11:10:00Z&consumer=alice&group_by=hour,status",
            NOW.parse().unwrap(),
        )
        .unwrap();
        let r = q.report(rows);
        assert_eq!(
            r,
            vec![
                (vec!["2026-12-07T10:00:00Z".to_string(), "2xx".to_string()], counts(3)),
                (vec!["2026-12-07T11:00:00Z".to_string(), "2xx".to_string()], counts(2)),
                (vec!["2026-12-07T11:00:00Z".to_string(), "4xx".to_string()], counts(1)),
            ]
        );
    }

    #[test]
    fn csv_is_rfc_4180_and_defused() {
        let q = Query::parse("format=csv&group_by=consumer,day", NOW.parse().unwrap()).unwrap();
        let rows = vec![
            (vec!["a,b".to_string(), "2026-12-07".to_string()], counts(1)),
            (vec!["=HYPERLINK(\"x\")".to_string(), "2026-12-07".to_string()], counts(2)),
            (vec!["-".to_string(), "2026-12-07".to_string()], counts(3)),
        ];
        let (body, media) = q.render(&rows);
        assert!(media.starts_with("text/csv"));
        assert_eq!(
            body,
            "consumer,day,requests,request_bytes,response_bytes\r\n\
             \"a,b\",2026-12-07,1,10,100\r\n\
             \"'=HYPERLINK(\"\"x\"\")\",2026-12-07,2,20,200\r\n\
             -,2026-12-07,3,30,300\r\n"
        );
    }
}
