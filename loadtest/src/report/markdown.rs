//! The human summary (`summary.md`): what was run, on what, and the numbers
//! an SRE looks at first, with the charts linked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Report;
use crate::report::human_us;
use crate::stats::Percentiles;
use crate::track::OffsetTotals;

fn offset_row(name: &str, t: &OffsetTotals) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        t.socket_channels,
        t.events,
        t.lost,
        t.lost_announced,
        t.lost_silent(),
        t.duplicates,
        t.out_of_order,
        t.resyncs,
        t.epoch_changes,
        t.recovered,
        t.not_recovered,
        t.replayed
    )
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("`{k}` {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lat_row(name: &str, p: &Percentiles) -> String {
    if p.count == 0 {
        return format!("| {name} | 0 | - | - | - | - | - |\n");
    }
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} |\n",
        p.count,
        human_us(p.p50_us),
        human_us(p.p90_us),
        human_us(p.p99_us),
        human_us(p.p999_us),
        human_us(p.max_us)
    )
}

/// Renders the summary.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let p = &r.plan;
    let _ = writeln!(s, "# Load test `{}` ({})\n", r.name, p.scenario.name());
    let verdict = if r.outcome.problems.is_empty() {
        "clean run"
    } else {
        "problems found"
    };
    let _ = writeln!(
        s,
        "**Verdict: {verdict}**{}\n",
        if r.outcome.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    for problem in &r.outcome.problems {
        let _ = writeln!(s, "- {problem}");
    }
    if !r.outcome.problems.is_empty() {
        s.push('\n');
    }

    let _ = writeln!(s, "## Run\n");
    let _ = writeln!(s, "- command: `{}`", r.command);
    let _ = writeln!(
        s,
        "- machine: {} cores, {:.1} GiB memory, kernel {}, open-files limit {}",
        r.machine.cores,
        r.machine.memory_kib as f64 / 1048576.0,
        r.machine.kernel,
        r.machine
            .open_files_limit
            .map_or("?".into(), |l| l.to_string())
    );
    let _ = writeln!(s, "- tool: {}, started at unix {}", r.tool, r.started_unix);
    let targets: Vec<&str> = p.targets.iter().map(|t| t.url.as_str()).collect();
    let _ = writeln!(s, "- targets: {}", targets.join(", "));
    let _ = writeln!(
        s,
        "- sockets: {} over {} rooms, {} users, codec {:?}, token in {:?}; {} workers x {} threads; source addresses: {}",
        p.sockets,
        p.rooms,
        p.users,
        p.codec,
        p.token_in,
        p.workers,
        p.worker_threads,
        if p.source_ips.is_empty() {
            "OS default".to_owned()
        } else {
            p.source_ips
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if let Some(pp) = &p.publish {
        let _ = writeln!(
            s,
            "- publisher: {:?} to {:?}, rate(s) {:?} events/s, {:.1}s per step, {} B padding, {} lane(s)",
            pp.via,
            pp.target,
            pp.steps,
            pp.step_duration.as_secs_f64(),
            pp.payload_bytes,
            pp.publishers
        );
    }
    let _ = writeln!(
        s,
        "- phases: ramp {:.1}s, load {:.1}s, grace {:.1}s, wall {:.1}s",
        r.outcome.ramp_s, r.outcome.load_s, r.outcome.grace_s, r.outcome.wall_s
    );
    for n in &r.outcome.notes {
        let _ = writeln!(s, "- note: {n}");
    }

    let _ = writeln!(s, "\n## Sockets\n");
    let so = &r.sockets;
    let _ = writeln!(
        s,
        "| planned | connected | failed | connects/s (ramp) | peak open |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {} | {} | {} | {:.0} | {} |\n",
        so.planned, so.connected, so.failed, so.connect_rate_per_s, so.peak_open
    );
    let _ = writeln!(s, "- connect errors: {}", counts(&so.connect_errors));
    let _ = writeln!(
        s,
        "- disconnects during the run: {}\n",
        counts(&so.disconnects)
    );

    let _ = writeln!(s, "## Latency\n");
    s.push_str(
        "| what | count | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    s.push_str(&lat_row("connect (TCP to welcome)", &so.connect_latency));
    s.push_str(&lat_row("subscribe (to ok)", &so.subscribe_latency));
    s.push_str(&lat_row("event end-to-end", &r.latency));
    s.push('\n');

    let e = &r.events;
    let _ = writeln!(s, "## Events\n");
    let _ = writeln!(
        s,
        "| published | publish/s | delivered | delivered/s | lost | duplicated | out of order |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {} | {:.1} | {} | {:.0} | {} | {} | {} |\n",
        e.published,
        e.publish_rate,
        e.delivery.unique,
        e.delivered_per_s,
        e.delivery.lost,
        e.delivery.duplicates,
        e.delivery.out_of_order
    );
    let _ = writeln!(
        s,
        "- publish failures: {}; publisher behind: {}; foreign events: {}; sockets with loss: {}",
        counts(&e.publish_errors),
        e.publish_behind,
        e.delivery.foreign,
        e.delivery.sockets_with_loss
    );
    let _ = writeln!(
        s,
        "- publishes answered with an offset: {}; without history (offset 0): {}; re-sent after a redirect or failover: {}\n",
        e.publish_offsets, e.publish_no_history, e.publish_retried
    );

    if let Some(c) = &r.continuity {
        let _ = writeln!(s, "## Continuity by offset (contract section 6)\n");
        if c.totals.socket_channels == 0 && c.totals.resyncs == 0 {
            let _ = writeln!(
                s,
                "No event carried an offset and no position was given: the gateway keeps no \
                 history for these channels (or implements contract v1). Loss above is by the \
                 publisher's sequence numbers only.\n"
            );
        }
        s.push_str(
            "| kind | socket-channels | events with offset | lost | announced | silent | duplicates | out of order | resyncs | epoch changes | recovered | not recovered | replayed |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for (k, t) in &c.by_kind {
            s.push_str(&offset_row(k, t));
        }
        s.push_str(&offset_row("**all**", &c.totals));
        let _ = writeln!(
            s,
            "\n- lost = owed after the position the socket learnt (subscribe `ok`, `welcome`, `resync`) \
             and never received; announced = covered by a `resync` or a resume answered \
             `recovered: false`; silent = the rest (the contract allows none)"
        );
        if c.replay_latency.count > 0 {
            let p = &c.replay_latency;
            let _ = writeln!(
                s,
                "- replayed events: {}, latency from publish (includes the time down) p50 {}, p99 {}, max {}",
                p.count,
                human_us(p.p50_us),
                human_us(p.p99_us),
                human_us(p.max_us)
            );
        }
        if !c.channels.is_empty() {
            let mut chans: Vec<_> = c.channels.iter().collect();
            chans.sort_by(|a, b| b.1.resync_frames.cmp(&a.1.resync_frames).then(a.0.cmp(b.0)));
            let _ = writeln!(
                s,
                "\n| channel | resync frames | resync offsets (frames) | resumes not recovered |\n|---|---:|---|---:|"
            );
            for (name, ch) in chans.iter().take(30) {
                let offs: Vec<String> = ch
                    .resync_offsets
                    .iter()
                    .map(|(o, n)| format!("{o} ({n})"))
                    .collect();
                let _ = writeln!(
                    s,
                    "| `{name}` | {} | {} | {} |",
                    ch.resync_frames,
                    if offs.is_empty() {
                        "-".into()
                    } else {
                        offs.join(", ")
                    },
                    ch.not_recovered
                );
            }
            if chans.len() > 30 || c.channels_unlisted > 0 {
                let _ = writeln!(
                    s,
                    "\n({} more channels in result.json, {} not listed)",
                    chans.len().saturating_sub(30),
                    c.channels_unlisted
                );
            }
        }
        s.push('\n');
    }
    if let Some(rc) = &r.reconnect {
        let _ = writeln!(s, "## Reconnects (resume mode)\n");
        let _ = writeln!(
            s,
            "- reconnect: {}; backoff full jitter, attempt n waits in [0, min({}s, {}s x 2^n)]",
            if rc.reconnect {
                "on"
            } else {
                "off (accounting only)"
            },
            rc.backoff_max_s,
            rc.backoff_min_s
        );
        let _ = writeln!(s, "- closes: {}", counts(&rc.closes));
        let _ = writeln!(
            s,
            "- attempts {}, resumed {}, failed attempts: {}; still down at the end: {}",
            rc.attempts,
            rc.resumed,
            counts(&rc.failures),
            rc.down_at_end
        );
        let p = &rc.close_to_resumed;
        if p.count > 0 {
            let _ = writeln!(
                s,
                "- close to resumed: p50 {}, p90 {}, p99 {}, max {}",
                human_us(p.p50_us),
                human_us(p.p90_us),
                human_us(p.p99_us),
                human_us(p.max_us)
            );
        }
        let _ = writeln!(
            s,
            "- most resumes in one second: {}; seconds with resumes: {} ([reconnects.svg](reconnects.svg))\n",
            rc.peak_per_s, rc.seconds_with_reconnects
        );
    }
    if r.steps.len() > 1 {
        let _ = writeln!(s, "## Rate steps\n");
        s.push_str(
            "| rate (ev/s) | seconds | published | behind | delivered/s | p50 | p99 | max |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for st in &r.steps {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {} | {} | {:.0} | {} | {} | {} |",
                st.rate,
                st.seconds,
                st.published,
                st.behind,
                st.delivered_per_s,
                human_us(st.latency.p50_us),
                human_us(st.latency.p99_us),
                human_us(st.latency.max_us)
            );
        }
        s.push('\n');
    }
    if let Some(c) = &r.churn {
        let _ = writeln!(
            s,
            "## Churn\n\n- target {} connects/s; opened {} ({:.0}/s), closed after hold {}\n",
            c.target_rate, c.opened, c.achieved_rate, c.closed
        );
    }
    if let Some(sl) = &r.slow {
        let _ = writeln!(
            s,
            "## Slow sockets\n\n- {} sockets stopped reading; they had {} events buffered at the end; endings: {}\n",
            sl.sockets,
            sl.events_read,
            counts(&sl.endings)
        );
    }
    let c = &r.client;
    let _ = writeln!(
        s,
        "## Load generator\n\n- {} workers, peak RSS {:.1} MiB in total ({} B per socket)",
        c.workers,
        c.peak_rss_kib as f64 / 1024.0,
        c.rss_per_socket_bytes
    );
    let _ = writeln!(
        s,
        "- CPU (user + system): {:.1} s ({:.1} s workers, {:.1} s coordinator) = **{:.2} µs per event received** \
         ({:.2} µs in the workers); {:.2} cores on average over the run, busiest second of the workers {:.2} cores \
         of {} on this machine\n",
        c.cpu_s,
        c.workers_cpu_s,
        c.coordinator_cpu_s,
        c.cpu_us_per_event,
        c.workers_cpu_us_per_event,
        c.cores_avg,
        c.workers_cores_peak,
        r.machine.cores
    );
    let _ = writeln!(
        s,
        "## Charts\n\n![latency](latency.svg)\n\n![sockets](sockets.svg)\n\n![throughput](throughput.svg)\n\n![reconnects](reconnects.svg)"
    );
    s
}
