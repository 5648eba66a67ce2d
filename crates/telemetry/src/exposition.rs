//! The two text formats `/metrics` speaks, and how a scraper's `Accept` header picks one.
//!
//! prometheus-client encodes OpenMetrics 1.0 only. The Prometheus text format 0.0.4 differs
//! in its metadata, not its samples: a counter's `# TYPE`/`# HELP` name the `_total` series,
//! an info metric is a gauge named `_info`, there is no `# UNIT`, no `# EOF`, no exemplars
//! and no `_created` series. [`PrometheusText`] rewrites the OpenMetrics stream line by line
//! as it is written, so the exposition is produced in one pass into one buffer.

use std::fmt::{self, Write};

/// A metrics exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// The Prometheus text format 0.0.4: what a scraper gets unless it asks for OpenMetrics.
    Prometheus,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How well one `Accept` media range fits a format: how specific the range is, its weight in
/// thousandths, and where it stands in the header.
#[derive(Clone, Copy)]
struct Fit {
    specificity: u8,
    q: u16,
    position: usize,
}

impl Exposition {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::Prometheus => PROMETHEUS_TYPE,
            Exposition::OpenMetrics => OPENMETRICS_TYPE,
        }
    }

    /// The format an `Accept` header prefers (RFC 9110 §12.5.1: the most specific matching
    /// range gives a format its weight; the heavier format wins, then the one listed first).
    /// OpenMetrics is served for `application/openmetrics-text` (versions 0.0.1 and 1.0.0)
    /// and `application/*`; anything else, including no header, a header that accepts
    /// neither format, and `*/*` alone, gets the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let Some(accept) = accept else {
            return Exposition::Prometheus;
        };
        let mut text: Option<Fit> = None;
        let mut open: Option<Fit> = None;
        for (position, range) in accept.split(',').enumerate() {
            let mut params = range.split(';');
            let media = params.next().unwrap_or_default().trim();
            let Some((kind, sub)) = media.split_once('/') else {
                continue;
            };
            let (mut q, mut version) = (Some(1000), None);
            for param in params {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim() {
                    k if k.eq_ignore_ascii_case("q") => q = parse_q(value),
                    k if k.eq_ignore_ascii_case("version") => version = Some(value),
                    _ => {}
                }
            }
            let Some(q) = q else {
                continue;
            };
            let (kind, sub) = (kind.trim(), sub.trim());
            let exact = |k: &str, s: &str| kind.eq_ignore_ascii_case(k) && sub.eq_ignore_ascii_case(s);
            let (for_text, for_open) = if exact("text", "plain") {
                (matches!(version, None | Some("0.0.4")).then_some(2), None)
            } else if exact("application", "openmetrics-text") {
                (None, matches!(version, None | Some("0.0.1" | "1.0.0")).then_some(2))
            } else if exact("text", "*") {
                (Some(1), None)
            } else if exact("application", "*") {
                (None, Some(1))
            } else if exact("*", "*") {
                (Some(0), Some(0))
            } else {
                (None, None)
            };
            for (best, specificity) in [(&mut text, for_text), (&mut open, for_open)] {
                let Some(specificity) = specificity else {
                    continue;
                };
                let fit = Fit { specificity, q, position };
                *best = match *best {
                    Some(b) if b.specificity > specificity || (b.specificity == specificity && b.q >= q) => Some(b),
                    _ => Some(fit),
                };
            }
        }
        let weight = |f: Option<Fit>| f.filter(|f| f.q > 0);
        match (weight(text), weight(open)) {
            (_, None) => Exposition::Prometheus,
            (None, Some(_)) => Exposition::OpenMetrics,
            (Some(t), Some(o)) => {
                // Equal weights: the range listed first; `*/*` alone keeps the default.
                if o.q > t.q || (o.q == t.q && o.position < t.position) {
                    Exposition::OpenMetrics
                } else {
                    Exposition::Prometheus
                }
            }
        }
    }
}

/// A `q` value (`0`, `0.5`, `1.000`...) in thousandths; `None` when malformed.
fn parse_q(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths =
        fraction.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// What the current metric family is, for the samples that follow its `# TYPE`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Samples pass as they are.
    Plain,
    /// A counter, histogram or summary: its `_created` series has no place in the text format.
    WithCreated,
}

/// A [`fmt::Write`] that takes OpenMetrics text and writes the Prometheus text format 0.0.4
/// to `out`. Lines are rewritten as they complete; call [`PrometheusText::finish`] at the end.
pub struct PrometheusText<'a> {
    out: &'a mut String,
    /// The line being written.
    line: String,
    /// A `# HELP` line held until its `# TYPE` says which name it must carry.
    help: String,
    /// The current family's name (OpenMetrics spelling) and kind.
    family: String,
    kind: Family,
}

impl<'a> PrometheusText<'a> {
    /// Writes the converted text to `out`.
    pub fn new(out: &'a mut String) -> Self {
        PrometheusText {
            out,
            line: String::with_capacity(256),
            help: String::new(),
            family: String::new(),
            kind: Family::Plain,
        }
    }

    /// Converts what is left of the input (a last line without a newline).
    pub fn finish(mut self) {
        if !self.line.is_empty() {
            self.convert_line();
        }
        self.flush_help();
    }

    fn flush_help(&mut self) {
        if !self.help.is_empty() {
            self.out.push_str(&self.help);
            self.out.push('\n');
            self.help.clear();
        }
    }

    /// Converts the complete line in `self.line` and clears it.
    fn convert_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        self.convert(&line);
        self.line = line;
        self.line.clear();
    }

    fn convert(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            self.flush_help();
            self.help.push_str(rest);
            return;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            self.convert_type(rest);
            return;
        }
        self.flush_help();
        if line.is_empty() || line == "# EOF" || line.starts_with("# UNIT ") {
            return;
        }
        if line.starts_with('#') {
            self.out.push_str(line);
            self.out.push('\n');
            return;
        }
        // A sample: `name{labels} value [timestamp] [# exemplar]`. Only name, labels and
        // value carry over (OpenMetrics timestamps are seconds, text-format ones milliseconds).
        let series_end = series_end(line);
        let (series, rest) = line.split_at(series_end);
        let name = &series[..series.find('{').unwrap_or(series.len())];
        if self.kind == Family::WithCreated
            && name
                .strip_suffix("_created")
                .is_some_and(|n| n == self.family || n.strip_suffix("_total") == Some(self.family.as_str()))
        {
            return;
        }
        self.out.push_str(series);
        if let Some(value) = rest.split_ascii_whitespace().next() {
            self.out.push(' ');
            self.out.push_str(value);
        }
        self.out.push('\n');
    }

    fn convert_type(&mut self, rest: &str) {
        let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "unknown"));
        let (suffix, text_kind, family) = match kind {
            "counter" => ("_total", "counter", Family::WithCreated),
            "gauge" => ("", "gauge", Family::Plain),
            "histogram" => ("", "histogram", Family::WithCreated),
            "summary" => ("", "summary", Family::WithCreated),
            "info" => ("_info", "gauge", Family::Plain),
            "stateset" => ("", "gauge", Family::Plain),
            _ => ("", "untyped", Family::Plain),
        };
        self.family.clear();
        self.family.push_str(name);
        self.kind = family;
        if let Some(text) = self.help.strip_prefix(name).and_then(|t| t.strip_prefix(' ')) {
            let _ = writeln!(self.out, "# HELP {name}{suffix} {text}");
            self.help.clear();
        } else {
            self.flush_help();
        }
        let _ = writeln!(self.out, "# TYPE {name}{suffix} {text_kind}");
    }
}

/// Where the series (name and labels) of a sample line ends: at the first space outside the
/// label braces, whose quoted values may hold spaces, braces and escaped quotes.
fn series_end(line: &str) -> usize {
    let bytes = line.as_bytes();
    let (mut in_labels, mut in_quotes, mut escaped) = (false, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_quotes {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'{' => in_labels = true,
            b'}' => in_labels = false,
            b'"' if in_labels => in_quotes = true,
            b' ' if !in_labels => return i,
            _ => {}
        }
    }
    bytes.len()
}

impl Write for PrometheusText<'_> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        while let Some(i) = s.find('\n') {
            self.line.push_str(&s[..i]);
            self.convert_line();
            s = &s[i + 1..];
        }
        self.line.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(open_metrics: &str) -> String {
        let mut out = String::new();
        let mut w = PrometheusText::new(&mut out);
        // Written in odd pieces, as an encoder does.
        for piece in open_metrics.as_bytes().chunks(7) {
            w.write_str(std::str::from_utf8(piece).unwrap()).unwrap();
        }
        w.finish();
        out
    }

    #[test]
    fn counters_are_typed_by_their_total_series() {
        let text = convert(
            "# HELP app_requests Requests.\n# TYPE app_requests counter\n\
             app_requests_total{route=\"a\",code=\"200\"} 3\napp_requests_created{route=\"a\",code=\"200\"} 1.7e9\n\
             app_requests_total{route=\"a\",code=\"404\"} 1 # {trace_id=\"x\"} 1.0 1.7e9\n# EOF\n",
        );
        assert_eq!(
            text,
            "# HELP app_requests_total Requests.\n# TYPE app_requests_total counter\n\
             app_requests_total{route=\"a\",code=\"200\"} 3\napp_requests_total{route=\"a\",code=\"404\"} 1\n"
        );
    }

    #[test]
    fn gauges_histograms_info_and_units() {
        let text = convert(
            "# HELP g A gauge.\n# TYPE g gauge\ng 5\n\
             # HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n# UNIT lat_seconds seconds\n\
             lat_seconds_sum 0.5\nlat_seconds_count 2\nlat_seconds_bucket{le=\"0.1\"} 1\nlat_seconds_bucket{le=\"+Inf\"} 2\n\
             # HELP build Build.\n# TYPE build info\nbuild_info{version=\"1 {x} \\\"y\\\"\"} 1\n\
             # TYPE odd unknown\nodd 1\n# EOF\n",
        );
        assert_eq!(
            text,
            "# HELP g A gauge.\n# TYPE g gauge\ng 5\n\
             # HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
             lat_seconds_sum 0.5\nlat_seconds_count 2\nlat_seconds_bucket{le=\"0.1\"} 1\nlat_seconds_bucket{le=\"+Inf\"} 2\n\
             # HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1 {x} \\\"y\\\"\"} 1\n\
             # TYPE odd untyped\nodd 1\n"
        );
    }

    #[test]
    fn negotiation() {
        use Exposition::{OpenMetrics as Om, Prometheus as Text};
        let cases: &[(Option<&str>, Exposition)] = &[
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("text/plain; version=0.0.4"), Text),
            (Some("application/openmetrics-text"), Om),
            (Some("Application/OpenMetrics-Text; Version=1.0.0; charset=utf-8"), Om),
            (Some("application/openmetrics-text; version=0.0.1"), Om),
            // A version we cannot produce does not match.
            (Some("application/openmetrics-text; version=2.0.0"), Text),
            (Some("application/*"), Om),
            // What Prometheus sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Om,
            ),
            (Some("text/plain;q=0.9, application/openmetrics-text;q=0.1"), Text),
            (Some("application/openmetrics-text;q=0, */*"), Text),
            (Some("text/plain;q=0, */*;q=0.1"), Om),
            (Some("text/plain;q=0, application/openmetrics-text;q=0"), Text),
            // Equal weights: the first listed.
            (Some("application/openmetrics-text, text/plain"), Om),
            (Some("text/plain, application/openmetrics-text"), Text),
            // A more specific range overrides a wildcard, whatever their order.
            (Some("*/*;q=1, application/openmetrics-text;q=0.2"), Text),
            (Some("application/json"), Text),
            (Some("application/openmetrics-text;q=bogus, text/plain;q=0.1"), Text),
            (Some("application/openmetrics-text;q=0.25, text/plain;q=0.249"), Om),
        ];
        for (accept, want) in cases {
            assert_eq!(Exposition::negotiate(*accept), *want, "{accept:?}");
        }
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.05"), Some(50));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
        assert_eq!(parse_q("2"), None);
        assert_eq!(parse_q("0.x"), None);
    }
}
