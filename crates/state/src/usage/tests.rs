use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portcullis-usage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rec<'a>(consumer: &'a str, route: &'a str, status: u16) -> Record<'a> {
    Record { consumer, plan: "gold", route, status, requests: 1, request_bytes: 10, response_bytes: 100 }
}

fn totals(m: &Meter) -> HashMap<(String, String, u8), Counts> {
    let mut out: HashMap<(String, String, u8), Counts> = HashMap::new();
    for (s, c) in m.local.lock().unwrap().totals.iter() {
        out.entry((s.consumer.to_string(), s.route.to_string(), s.class)).or_default().add(c);
    }
    out
}

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn counts_by_consumer_route_and_status_class() {
    let m = Meter::new(DAY, 1000, None);
    for _ in 0..3 {
        m.record(&rec("alice", "orders", 200));
    }
    m.record(&rec("alice", "orders", 404));
    m.record(&rec("bob", "orders", 201));
    m.record(&Record { requests: 0, request_bytes: 0, response_bytes: 5, ..rec("bob", "orders", 201) });
    m.flush().await.unwrap();
    let t = totals(&m);
    assert_eq!(
        t[&("alice".into(), "orders".into(), 2)],
        Counts { requests: 3, request_bytes: 30, response_bytes: 300 }
    );
    assert_eq!(t[&("alice".into(), "orders".into(), 4)].requests, 1);
    assert_eq!(t[&("bob".into(), "orders".into(), 2)], Counts { requests: 1, request_bytes: 10, response_bytes: 105 });
    assert_eq!(t.len(), 3);
    // A flush with nothing new changes nothing.
    m.flush().await.unwrap();
    assert_eq!(totals(&m), t);
}

#[tokio::test]
async fn queries_take_the_hours_asked_for() {
    let m = Meter::new(DAY * 400, 1000, None);
    let now = now_secs() / 3600;
    m.record_at(now - 2, &rec("a", "r", 200));
    m.record_at(now - 1, &rec("a", "r", 200));
    m.record_at(now, &rec("a", "r", 200));
    let rows = m.query(now - 1, now + 1).await.unwrap();
    let mut hours: Vec<u64> = rows.iter().map(|(s, _)| s.hour).collect();
    hours.sort();
    assert_eq!(hours, [now - 1, now]);
    assert_eq!(m.query(now - 2, now - 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn counts_survive_a_restart_through_the_journal() {
    let d = dir("restart");
    let path = d.join("portcullis.state");
    {
        let m = Meter::new(DAY, 1000, Some(Journal::open(&path).unwrap()));
        for i in 0..50 {
            m.record(&rec(if i % 2 == 0 { "alice" } else { "bob" }, "orders", 200));
        }
        m.flush().await.unwrap();
        m.record(&rec("alice", "orders", 500));
        m.close().await.unwrap();
    }
    let m = Meter::new(DAY, 1000, Some(Journal::open(&path).unwrap()));
    let t = totals(&m);
    assert_eq!(t[&("alice".into(), "orders".into(), 2)].requests, 25);
    assert_eq!(t[&("bob".into(), "orders".into(), 2)].requests, 25);
    assert_eq!(t[&("alice".into(), "orders".into(), 5)].requests, 1);
    // And go on counting from there.
    m.record(&rec("bob", "orders", 200));
    m.close().await.unwrap();
    drop(m);
    let again = read_journal(&path).unwrap();
    let bob: u64 = again.iter().filter(|(s, _)| &*s.consumer == "bob").map(|(_, c)| c.requests).sum();
    assert_eq!(bob, 26);
}

#[tokio::test]
async fn a_second_gateway_cannot_take_a_journal_in_use() {
    let d = dir("lock");
    let path = d.join("usage");
    let first = Journal::open(&path).unwrap();
    let e = Journal::open(&path).err().unwrap();
    assert!(e.contains("in use by another gateway") && e.contains("state.path"), "{e}");
    drop(first);
    Journal::open(&path).unwrap();
}

#[test]
fn a_torn_last_line_is_skipped_and_a_foreign_file_refused() {
    let d = dir("torn");
    let path = d.join("usage");
    let hour = now_secs() / 3600;
    let line = format!("{{\"h\":{hour},\"c\":\"a\",\"p\":\"\",\"r\":\"r\",\"s\":2,\"n\":4,\"i\":0,\"o\":0}}\n");
    std::fs::write(&path, format!("{HEADER}\n{line}{line}{{\"h\":{hour},\"c\":\"a\",\"p")).unwrap();
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.loaded.values().map(|c| c.requests).sum::<u64>(), 8);
    assert!(!with_suffix(&path, ".corrupt").exists(), "a torn last line is what a crash leaves");
    // Rewritten clean: the torn line is gone.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(HEADER) && text.ends_with("}\n"), "{text}");
    drop(j);

    // A bad line in the middle: skipped, and the file kept aside before the rewrite.
    std::fs::write(&path, format!("{HEADER}\n{line}garbage\n{line}")).unwrap();
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.loaded.values().map(|c| c.requests).sum::<u64>(), 8);
    assert!(std::fs::read_to_string(with_suffix(&path, ".corrupt")).unwrap().contains("garbage"));
    drop(j);

    let foreign = d.join("notes.txt");
    std::fs::write(&foreign, "my notes\n").unwrap();
    let e = Journal::open(&foreign).err().unwrap();
    assert!(e.contains("not a Portcullis usage journal"), "{e}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "my notes\n", "another program's file is left alone");
}

#[tokio::test]
async fn the_journal_is_compacted_without_losing_counts() {
    let d = dir("compact");
    let path = d.join("usage");
    let m = Meter::new(DAY, 100_000, Some(Journal::open(&path).unwrap()));
    let names: Vec<String> = (0..2000).map(|i| format!("consumer-{i:05}-{}", "x".repeat(40))).collect();
    for _round in 0..40 {
        for n in &names {
            m.record(&rec(n, "orders", 200));
        }
        m.flush().await.unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    // 80,000 journal lines of ~110 bytes would be ~9 MB: the rewrite keeps it near one
    // line per series.
    assert!(size < 2 * COMPACT_MIN_BYTES + (COMPACT_MIN_BYTES / 2), "{size}");
    m.close().await.unwrap();
    drop(m);
    let back = read_journal(&path).unwrap();
    assert_eq!(back.len(), 2000);
    assert!(back.values().all(|c| c.requests == 40));
}

#[tokio::test]
async fn series_past_the_cap_are_counted_as_other() {
    let m = Meter::new(DAY, 2, None);
    for who in ["a", "b", "c", "d"] {
        m.record(&rec(who, "r", 200));
        m.flush().await.unwrap();
    }
    let t = totals(&m);
    assert_eq!(t[&(OTHER.into(), "r".into(), 2)].requests, 2);
    assert_eq!(t.values().map(|c| c.requests).sum::<u64>(), 4, "nothing is lost");
}

#[tokio::test]
async fn hours_past_the_retention_are_dropped() {
    let m = Meter::new(Duration::from_secs(2 * 3600), 1000, None);
    let now = now_secs() / 3600;
    m.record_at(now - 5, &rec("old", "r", 200));
    m.record_at(now, &rec("new", "r", 200));
    m.flush().await.unwrap();
    let t = totals(&m);
    assert!(t.keys().all(|(c, _, _)| c == "new"), "{t:?}");
}

#[test]
fn redis_fields_read_back_whatever_the_names() {
    let s = Series { hour: 7, consumer: "a|b\"c\n".into(), plan: "".into(), route: "r,1".into(), class: 4 };
    for what in ['n', 'i', 'o'] {
        let f = field(what, &s);
        assert_eq!(parse_field(7, f.as_bytes()), Some((what as u8, s.clone())));
    }
    assert_eq!(parse_field(7, b"x|[\"a\",\"\",\"r\",2]"), None);
    assert_eq!(parse_field(7, b"n|[\"a\",\"\",\"r\",9]"), None);
    assert_eq!(parse_field(7, b"n|garbage"), None);
    assert_eq!(parse_field(7, b""), None);
}

#[test]
fn a_journal_line_is_one_line_whatever_the_names() {
    let s = Series { hour: 1, consumer: "a\nb".into(), plan: "p".into(), route: "r".into(), class: 2 };
    let mut out = Vec::new();
    push_line(&mut out, &s, &Counts { requests: 1, request_bytes: 2, response_bytes: 3 });
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
    let l: Line = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
    assert_eq!(l.series, s);
    assert_eq!(l.counts, Counts { requests: 1, request_bytes: 2, response_bytes: 3 });
}

#[tokio::test]
async fn a_failed_write_is_repaired_by_rewriting_the_journal_from_the_totals() {
    let d = dir("broken");
    let path = d.join("usage");
    let m = Meter::new(DAY, 1000, Some(Journal::open(&path).unwrap()));
    m.record(&rec("a", "r", 200));
    m.flush().await.unwrap();
    // The next write fails (as on a full disk): a handle that cannot write.
    m.local.lock().unwrap().journal.as_mut().unwrap().file = std::fs::File::open(&path).unwrap();
    m.record(&rec("a", "r", 200));
    assert!(m.flush().await.is_err());
    assert_eq!(read_journal(&path).unwrap().values().map(|c| c.requests).sum::<u64>(), 1);
    // The next flush rewrites the file from the totals: nothing is lost.
    m.record(&rec("a", "r", 200));
    m.flush().await.unwrap();
    assert_eq!(read_journal(&path).unwrap().values().map(|c| c.requests).sum::<u64>(), 3);
    m.record(&rec("a", "r", 200));
    m.close().await.unwrap();
    assert_eq!(read_journal(&path).unwrap().values().map(|c| c.requests).sum::<u64>(), 4);
}
