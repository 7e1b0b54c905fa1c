//! The job page in a real browser (issue 4): headless Chromium driven through
//! chromedriver's WebDriver JSON API over a plain socket. The page loads, lines
//! appear live, ANSI colours render, `#L<n>` links scroll to their line, the
//! stream switch filters, scrolling up pauses auto-scroll, and `complete` shows
//! the exit code. Screenshots go to the test's temp dir, never the repository.

use crate::util::serve::*;
use crate::util::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Flags for Chromium in a container without a display or a sandbox, and with
/// nothing that phones home.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1200,800",
];

fn find(names: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p.to_string_lossy().into_owned());
            }
        }
    }
    None
}

/// A chromedriver process and one browser session; both ended on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start(chromium: &str, chromedriver: &str, profile: &std::path::Path) -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
        };
        wait_until(LIMIT, "chromedriver to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let v = b.call("POST", "/session", Some(&caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver call; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        // chromedriver keeps the connection open: read the head, then exactly
        // Content-Length bytes (it never answers chunked).
        let mut all = Vec::new();
        let mut chunk = [0u8; 8192];
        let resp = loop {
            if let Some(end) = memchr::memmem::find(&all, b"\r\n\r\n") {
                let head = parse_response(&all[..end + 4]);
                let len: usize = head
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no Content-Length: {}", head.head));
                if all.len() >= end + 4 + len {
                    break parse_response(&all[..end + 4 + len]);
                }
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "chromedriver closed: {}",
                String::from_utf8_lossy(&all)
            );
            all.extend_from_slice(&chunk[..n]);
        };
        let v: Value =
            serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{e}: {}", resp.text()));
        assert_eq!(resp.status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn session_call(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        self.call(method, &format!("/session/{}/{what}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session_call("POST", "url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns its result.
    fn js(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Waits until `script` returns true. A script that throws (an element
    /// the page has not made yet, while it loads) counts as not yet.
    fn wait_js(&self, what: &str, script: &str) {
        let guarded = format!("try {{ {script} }} catch (e) {{ return false; }}");
        wait_until(LIMIT, what, || self.js(&guarded) == Value::Bool(true));
    }

    fn screenshot(&self, path: &std::path::Path) {
        let b64 = self.session_call("GET", "screenshot", None);
        std::fs::write(path, b64.as_str().unwrap_or_default()).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.call("DELETE", &format!("/session/{}", self.session), None)
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A job that echoes its stdin lines; the line `quit` ends it with status 3.
const QUIT3_JOB: &str = r#"while IFS= read -r l; do [ "$l" = quit ] && exit 3; case "$l" in e:*) printf '%s\n' "${l#e:}" >&2;; *) printf '%s\n' "$l";; esac; done"#;

#[test]
fn browser_follows_a_job_live_with_colours_links_and_the_exit_badge() {
    let (Some(chromium), Some(driver)) = (
        find(&["chromium", "chromium-browser", "google-chrome"]),
        find(&["chromedriver"]),
    ) else {
        // CI installs both (.ci/run), so there a missing browser is a failure,
        // not a reason to pass quietly.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true but chromium/chromedriver are missing: .ci/run should install them"
        );
        eprintln!(
            "SKIPPED browser_follows_a_job_live...: chromium and chromedriver are not installed \
             (apt-get install chromium chromium-driver; .ci/run installs them)"
        );
        return;
    };
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let child = env
        .cmd()
        .args([
            "--job-run-id",
            "web",
            "--no-pty",
            "-q",
            "--",
            "sh",
            "-c",
            QUIT3_JOB,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut job = LiveJob::adopt(&env, "web", child);
    for i in 1..=59 {
        job.say(&format!("line {i}"));
    }
    job.say("\x1b[31mred\x1b[0m plain \x1b[1;32mbold green\x1b[0m");
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    let base = format!("http://127.0.0.1:{}", srv.port);

    // The job list links to the job.
    browser.goto(&format!("{base}/"));
    browser.wait_js(
        "the job list",
        "return !!document.querySelector('a[href=\"job_runs/web\"]');",
    );

    browser.goto(&format!("{base}/job_runs/web"));
    browser.wait_js(
        "the first lines",
        "return document.getElementById('rows').textContent.includes('bold green');",
    );
    // Colours: SGR 31 is red, 1;32 bold green.
    let red = browser.js(
        "const s=[...document.querySelectorAll('#rows span')].find(e=>e.textContent==='red');\
         return s && getComputedStyle(s).color;",
    );
    assert_eq!(red, "rgb(205, 49, 49)");
    let bold = browser.js(
        "const s=[...document.querySelectorAll('#rows span')].find(e=>e.textContent==='bold green');\
         return s && [getComputedStyle(s).color, getComputedStyle(s).fontWeight];",
    );
    assert_eq!(bold, json!(["rgb(13, 188, 121)", "700"]));
    assert_eq!(
        browser.js("return document.getElementById('badge').textContent;"),
        "running"
    );

    // Lines appear live, 256-colour and truecolor included, and the view
    // follows the bottom.
    job.say("\x1b[38;5;208morange\x1b[0m \x1b[38;2;10;200;250mtrue\x1b[0m");
    job.say("e:to stderr");
    browser.wait_js(
        "a live line",
        "return document.getElementById('rows').textContent.includes('to stderr');",
    );
    let colours = browser.js(
        "const f=t=>getComputedStyle([...document.querySelectorAll('#rows span')].find(e=>e.textContent===t)).color;\
         return [f('orange'), f('true')];",
    );
    assert_eq!(colours, json!(["rgb(255, 135, 0)", "rgb(10, 200, 250)"]));
    browser.wait_js(
        "the view to stick to the bottom",
        "const l=document.getElementById('log');return l.scrollTop+l.clientHeight>=l.scrollHeight-40;",
    );

    // Scrolling up pauses auto-scroll; new lines do not move the view.
    browser.js("document.getElementById('log').scrollTop=0;");
    browser.wait_js(
        "the pause button",
        "return getComputedStyle(document.getElementById('pause')).display!=='none';",
    );
    job.say("while paused");
    browser.wait_js(
        "the line count to grow",
        "return document.getElementById('count').textContent.startsWith('63 ');",
    );
    assert_eq!(
        browser.js("return document.getElementById('log').scrollTop;"),
        0
    );
    // The button resumes following.
    browser.js("document.getElementById('pause').click();");
    browser.wait_js(
        "following again",
        "const l=document.getElementById('log');return l.scrollTop>0&&getComputedStyle(document.getElementById('pause')).display==='none';",
    );

    // A line link scrolls to its line and marks it.
    browser.js("location.hash='#L5';");
    browser.wait_js(
        "line 5 highlighted",
        "const r=document.getElementById('L5');return !!r&&r.classList.contains('hl')&&r.textContent.endsWith('line 5');",
    );

    // The stream switch: stderr only.
    browser.js("document.querySelector('input[value=stderr]').click();");
    browser.wait_js(
        "the stderr view",
        "const t=document.getElementById('rows').textContent;return t.includes('to stderr')&&!t.includes('line 59');",
    );
    browser.js("document.querySelector('input[value=combined]').click();");

    // The end: the badge shows the exit code and the page stops reconnecting.
    job.say("quit");
    assert_eq!(job.finish().code(), Some(3));
    browser.wait_js(
        "the exit badge",
        "return document.body.dataset.complete==='failed'&&document.getElementById('badge').textContent.includes('exit 3');",
    );
    // Raw download links point at the raw logs.
    let href = browser.js("return document.querySelector('a.raw').href;");
    let href = href.as_str().unwrap();
    assert_eq!(href, format!("{base}/api/job_runs/web/logs/stdout/raw"));
    let raw = get(srv.port, href.trim_start_matches(&base), &[]);
    assert_eq!(raw.body, env.stdout_log("web"));
    browser.screenshot(&env.path("page.png.b64"));
}

/// The rendered rows: (id, classes, line number shown, text after the number).
const ROWS_JS: &str = "return [...document.querySelectorAll('#rows .r')].map(r=>[r.id,r.className,\
    (r.querySelector('.n')||{}).textContent,(r.querySelector('.t')||{}).textContent]);";

/// True when the row `id` is marked and inside the visible part of the log.
fn in_view_js(id: &str) -> String {
    format!(
        "const r=document.getElementById('{id}');if(!r||!r.classList.contains('hl'))return false;{}",
        in_view_js_of("r")
    )
}

/// Returns whether the element in the variable `r` is inside the visible part
/// of the log.
fn in_view_js_of(r: &str) -> String {
    format!(
        "const a={r}.getBoundingClientRect(),b=document.getElementById('log').getBoundingClientRect();\
         return a.top>=b.top&&a.bottom<=b.bottom;"
    )
}

/// Issue 11, point 3: a big log opens at its tail and says how many lines come
/// before; earlier lines load on scroll or on demand; `#L<n>`, `#O<n>` and
/// `#L<a>-L<b>` reach their lines on first load, loaded or not; the combined
/// view numbers lines once, in arrival order; `?lines=` is capped, with a note.
#[test]
fn browser_opens_a_big_log_at_its_tail_and_links_reach_any_line() {
    let Some((chromium, driver)) = browser_tools("browser_opens_a_big_log...") else {
        return;
    };
    let env = TestEnv::new();
    // 20,000 lines on stdout; every 1,000th line also says so on stderr.
    assert_ok(&env.run_sh(
        "big",
        &["--no-pty", "-q"],
        "seq 1 20000 | while read -r i; do echo \"line $i\"; \
         [ $((i % 1000)) -eq 0 ] && echo \"err $i\" >&2; done; true",
    ));
    let srv = Serve::start(&env, &[]);
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    let page = format!("http://127.0.0.1:{}/job_runs/big", srv.port);

    browser.goto(&page);
    browser.wait_js(
        "the tail and the count",
        "return document.body.dataset.complete==='succeeded'&&\
         document.getElementById('count').textContent==='20,020 lines (1,000 loaded)';",
    );
    let rows: Vec<(String, String, String, String)> =
        serde_json::from_value(browser.js(ROWS_JS)).unwrap();
    let last = rows.last().unwrap();
    assert!(last.3 == "err 20000" || last.3 == "line 20000", "{rows:?}");
    // One numbering: the rows shown are numbered 20,020 down, consecutively,
    // stdout and stderr alike (a stderr row is marked, not numbered apart).
    let numbered: Vec<&(String, String, String, String)> =
        rows.iter().filter(|r| !r.1.contains("gap")).collect();
    for (i, r) in numbered.iter().rev().enumerate() {
        assert_eq!(r.2, (20_020 - i).to_string(), "{rows:?}");
        assert_eq!(r.0, format!("L{}", r.2));
        assert_eq!(r.1.split(' ').any(|c| c == "e"), r.3.starts_with("err"));
    }
    assert!(numbered.iter().any(|r| r.3 == "err 20000"));

    // Scrolled to the top: a row says how many lines are not loaded, and the
    // next thousand load, with the line that was at the top staying there.
    browser.js("document.getElementById('log').scrollTop=0;");
    browser.wait_js(
        "earlier lines loaded on scroll",
        "return document.getElementById('count').textContent==='20,020 lines (2,000 loaded)';",
    );
    // Back at the top, the gap row (read as it is drawn, before it loads
    // more) counts what is left; its button loads the start of the log
    // (after the load that scroll just started, which it waits for).
    let gap = browser.js("document.getElementById('log').scrollTop=0;render();\
         const g=document.querySelector('#rows .r.gap .t');if(!g)return null;\
         const t=g.textContent;g.querySelector('button[data-g=first]').click();return t;");
    assert!(
        gap.as_str()
            .is_some_and(|g| g.starts_with("18,020 earlier lines not loaded")),
        "{gap}"
    );
    browser.wait_js(
        "line 1 loaded",
        "return shown().some(l=>l.t==='line 1'&&l.p===1);",
    );

    // First load on a line far before the tail: it is fetched, shown in view
    // and marked. The same for a line in the tail, a range, and a stdout line.
    for (hash, text) in [
        ("#L123", "line 123"),
        ("#L20010", ""),
        ("#O5000", "line 5000"),
    ] {
        browser.goto("about:blank");
        browser.goto(&format!("{page}{hash}"));
        let marked = format!(
            "const r=document.querySelector('#rows .r.hl');if(!r)return false;\
             const t=r.querySelector('.t').textContent;\
             if({cond})return false;{view}",
            cond = if text.is_empty() {
                format!("r.id!=='{}'", &hash[1..])
            } else {
                format!("t!=='{text}'")
            },
            view = in_view_js_of("r"),
        );
        browser.wait_js(&format!("{hash} in view"), &marked);
    }
    browser.goto("about:blank");
    browser.goto(&format!("{page}#L10-L20"));
    browser.wait_js("the range in view", &in_view_js("L15"));
    let marked = browser.js("return [...document.querySelectorAll('#rows .r.hl')].map(r=>r.id);");
    let want: Vec<String> = (10..=20).map(|n| format!("L{n}")).collect();
    assert_eq!(marked, json!(want));

    // `?lines=` beyond the cap: capped, and the page says so.
    browser.goto(&format!("{page}?lines=1000000"));
    browser.wait_js(
        "the cap note",
        "return document.getElementById('note').textContent.includes('at most the last 50,000 lines');",
    );
    browser.wait_js(
        "the capped tail",
        "return document.getElementById('count').textContent==='20,020 lines';",
    );

    // A line a size limit left out: the page goes to the notice of the cut
    // and says so.
    assert_ok(&env.run_sh(
        "cut",
        &["--no-pty", "-q", "--max-log-size", "256K"],
        "seq 1 200000",
    ));
    browser.goto("about:blank");
    browser.goto(&format!(
        "http://127.0.0.1:{}/job_runs/cut#L100000",
        srv.port
    ));
    browser.wait_js(
        "the notice of the cut in view",
        &format!(
            "if(!document.getElementById('note').textContent.startsWith('Line L100000 is not kept: [')) return false;\
             const r=document.querySelector('#rows .r.note');if(!r||!r.textContent.includes('omitted by --max-log-size'))return false;{}",
            in_view_js_of("r")
        ),
    );
    browser.screenshot(&env.path("tail.png.b64"));
}

/// A job driven line by line from its stdin: `p:TEXT` prints TEXT and a bare
/// CR (a progress frame, no newline), `k` kills the job's shell with SIGTERM,
/// `quit` ends it with status 3, anything else is printed as a line.
const VIEWER_JOB: &str = r#"while IFS= read -r l; do case "$l" in p:*) printf '%s\r' "${l#p:}";; k) kill -TERM $$;; quit) exit 3;; *) printf '%s\n' "$l";; esac; done"#;

/// Issue 11, point 4: the header (command, host, start, live duration),
/// timestamps (clock and since start), wrapping, the line in progress shown
/// live, and a killed job's badge naming the signal.
#[test]
fn browser_shows_times_wraps_lines_the_line_in_progress_and_the_signal() {
    let Some((chromium, driver)) = browser_tools("browser_shows_times...") else {
        return;
    };
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let mut job = LiveJob::start_script(&env, "view", &[], VIEWER_JOB);
    job.say("first line");
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    browser.goto(&format!("http://127.0.0.1:{}/job_runs/view", srv.port));
    browser.wait_js(
        "the first line",
        "return shown().some(l=>l.t==='first line');",
    );
    let host = env.meta("view")["hostname"].as_str().unwrap().to_string();
    browser.wait_js(
        "the header",
        &format!(
            "const t=id=>document.getElementById(id).textContent;\
             return t('cmd').startsWith('sh -c ')&&t('host')==='on {host}'&&t('when').startsWith('started ')\
             &&t('dur').endsWith('so far')&&t('badge')==='running';"
        ),
    );

    // Timestamps: since the start, then the clock.
    let set_ts = |v: &str| {
        browser.js(&format!(
            "const s=document.getElementById('ts');s.value='{v}';s.dispatchEvent(new Event('change'));"
        ));
    };
    set_ts("rel");
    browser.wait_js(
        "relative stamps",
        "const s=document.querySelector('#rows .r .ts');return !!s&&/^\\+\\d+:\\d\\d\\.\\d{3}$/.test(s.textContent);",
    );
    set_ts("abs");
    browser.wait_js(
        "clock stamps",
        "const s=document.querySelector('#rows .r .ts');return !!s&&/^\\d\\d:\\d\\d:\\d\\d\\.\\d{3}$/.test(s.textContent);",
    );
    set_ts("off");

    // Wrapping: a long line takes several rows, all of it visible.
    let long = "w".repeat(700);
    job.say(&long);
    let row_of_long = "const r=[...document.querySelectorAll('#rows .r')].find(r=>(r.querySelector('.t')||{}).textContent.length===700);";
    browser.wait_js("the long line", &format!("{row_of_long}return !!r;"));
    assert_eq!(
        browser.js(&format!(
            "{row_of_long}return r.getBoundingClientRect().height;"
        )),
        18
    );
    browser.js("document.getElementById('wrap').click();");
    browser.wait_js(
        "the long line wrapped",
        &format!(
            "{row_of_long}if(!r)return false;const t=r.querySelector('.t');\
             return r.getBoundingClientRect().height>=36&&t.scrollWidth<=t.clientWidth+1&&t.scrollHeight<=r.clientHeight+1;"
        ),
    );
    browser.js("document.getElementById('wrap').click();");

    // The line in progress: shown live as a provisional last row, then
    // replaced by the finished line.
    job.say("p:progress 10%");
    job.say("p:progress 50%");
    browser.wait_js(
        "the provisional line",
        "const r=document.querySelector('#rows .r.pv');return !!r&&r.textContent.includes('progress 50%');",
    );
    job.say("done");
    browser.wait_js(
        "the finished line",
        "return !document.querySelector('#rows .r.pv')&&shown().some(l=>l.t.startsWith('done'));",
    );

    // Killed: the badge names the signal.
    job.say("k");
    job.finish();
    browser.wait_js(
        "the signal in the badge",
        "return document.body.dataset.complete==='killed'&&document.getElementById('badge').textContent==='killed (SIGTERM)';",
    );
    browser.wait_js(
        "the final duration",
        "const d=document.getElementById('dur').textContent;return d!==''&&!d.endsWith('so far');",
    );
}

/// Issue 11, point 4: the page recovers by itself after a server restart. It
/// says "reconnecting" while the server is away, and when the job ended
/// meanwhile (the reconnect gets 204, nothing left to send) it shows the
/// final status without a reload.
#[test]
fn browser_recovers_after_a_server_restart() {
    let Some((chromium, driver)) = browser_tools("browser_recovers...") else {
        return;
    };
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    let port = srv.port;
    let mut job = LiveJob::start_script(&env, "rs", &[], VIEWER_JOB);
    job.say("before the restart");
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    browser.goto(&format!("http://127.0.0.1:{port}/job_runs/rs"));
    browser.wait_js(
        "following",
        "return shown().some(l=>l.t==='before the restart')&&document.getElementById('badge').textContent==='running';",
    );
    drop(srv);
    browser.wait_js(
        "the reconnecting badge",
        "return document.getElementById('badge').textContent==='reconnecting';",
    );
    job.say("quit");
    assert_eq!(job.finish().code(), Some(3));
    let _srv = Serve::start_listening(env.cmd(), port, &[]);
    browser.wait_js(
        "the final status",
        "return document.body.dataset.complete==='failed'&&document.getElementById('badge').textContent==='failed (exit 3)';",
    );
    assert_eq!(
        browser.js("return shown().filter(l=>l.t==='before the restart').length;"),
        1
    );
}

/// Chromium and chromedriver, or `None` (after saying so) where they are not
/// installed; on CI their absence fails the test.
fn browser_tools(test: &str) -> Option<(String, String)> {
    match (
        find(&["chromium", "chromium-browser", "google-chrome"]),
        find(&["chromedriver"]),
    ) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI=true but chromium/chromedriver are missing: .ci/run should install them"
            );
            eprintln!("SKIPPED {test}: chromium and chromedriver are not installed");
            None
        }
    }
}

/// A job in three CI dialects of sections, with an annotation, ending in failure.
const SECTIONS_JOB: &str = r#"
echo '::group::Setup'; echo 'setup detail'; echo '::endgroup::'
t=$(date +%s)
printf '\033[0Ksection_start:%s:compile[collapsed=true]\r\033[0KCompile\n' "$t"
echo 'compile detail'
printf '\033[0Ksection_end:%s:compile\r\033[0K\n' "$((t + 2))"
echo '--- Tests'; echo 'test one'; echo 'needle A'
echo '::error file=t.rs,line=3::boom'
i=0; while [ $i -lt 100 ]; do echo "filler $i"; i=$((i + 1)); done
echo 'needle B'; exit 1"#;

#[test]
fn browser_folds_sections_lists_annotations_and_searches_the_whole_log() {
    let Some((chromium, driver)) = browser_tools("browser_folds_sections...") else {
        return;
    };
    let env = TestEnv::new();
    assert_fails_with(&env.run_sh("ci", &["--no-pty", "-q"], SECTIONS_JOB), 1);
    let srv = Serve::start(&env, &[]);
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    let base = format!("http://127.0.0.1:{}", srv.port);

    browser.goto(&format!("{base}/job_runs/ci"));
    browser.wait_js(
        "the end",
        "return document.body.dataset.complete==='failed';",
    );
    let visible = |t: &str| {
        browser.js(&format!(
            "return shown().some(l=>l.t==={});",
            serde_json::to_string(t).unwrap()
        ))
    };
    // Closed GitHub groups and collapsed GitLab sections fold, with their
    // titles (and the GitLab duration from its own stamps) on the header.
    assert_eq!(visible("setup detail"), false);
    assert_eq!(visible("compile detail"), false);
    browser.js("document.getElementById('log').scrollTop=0;");
    browser.wait_js(
        "the headers in view",
        "return document.querySelectorAll('#rows .r.h').length===3;",
    );
    let headers =
        browser.js("return [...document.querySelectorAll('#rows .r.h')].map(r=>r.textContent);");
    let headers: Vec<String> = serde_json::from_value(headers).unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h.ends_with("Setup0.0s") || h.contains("Setup")),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|h| h.contains("Compile") && h.ends_with("2.0s")),
        "{headers:?}"
    );
    // The section where the job failed stays open.
    assert_eq!(visible("test one"), true);
    // A click on a header unfolds it.
    browser.js("[...document.querySelectorAll('#rows .r.h')].find(r=>r.textContent.includes('Setup')).click();");
    browser.wait_js(
        "setup unfolded",
        "return shown().some(l=>l.t==='setup detail');",
    );

    // Annotations at the top link to their lines.
    browser.wait_js(
        "the annotation",
        "const a=document.querySelector('#ann li.error a');return !!a&&a.textContent==='error t.rs:3'&&a.getAttribute('href')==='#O10';",
    );
    browser.js("document.querySelector('#ann li.error a').click();");
    browser.wait_js(
        "the annotated line highlighted",
        "const r=document.getElementById('L10');return !!r&&r.classList.contains('hl');",
    );

    // `/` focuses the search box; Enter searches the whole log.
    browser.js("document.dispatchEvent(new KeyboardEvent('keydown',{key:'/'}));");
    assert_eq!(browser.js("return document.activeElement.id;"), "q");
    let search = "const q=document.getElementById('q');q.value='needle';\
        q.dispatchEvent(new KeyboardEvent('keydown',{key:'Enter'}));";
    browser.js(search);
    browser.wait_js(
        "the first match",
        "return document.getElementById('hits').textContent==='1/2'&&document.getElementById('L9').classList.contains('hl');",
    );
    browser.js("document.getElementById('next').click();");
    browser.wait_js(
        "the second match",
        "return document.getElementById('hits').textContent==='2/2'&&document.getElementById('L111').classList.contains('hl');",
    );

    // With only the tail loaded, the search still counts every match, and the
    // one before the loaded lines is fetched and shown.
    browser.goto(&format!("{base}/job_runs/ci?lines=20"));
    browser.wait_js(
        "the end",
        "return document.body.dataset.complete==='failed';",
    );
    browser.js(search);
    browser.wait_js(
        "the match before the loaded lines",
        "return document.getElementById('hits').textContent==='1/2'&&document.getElementById('L9').classList.contains('hl');",
    );
    browser.screenshot(&env.path("sections.png.b64"));
}

/// Issue 10: `serve --source redis://...` shows a job running on another
/// machine (another root, shipping with `--ship`) live in the same page.
#[test]
fn browser_follows_a_job_of_another_machine_through_redis() {
    let (Some(chromium), Some(driver)) = (
        find(&["chromium", "chromium-browser", "google-chrome"]),
        find(&["chromedriver"]),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true but chromium/chromedriver are missing: .ci/run should install them"
        );
        eprintln!("SKIPPED browser_follows_a_job_of_another_machine...: no chromium/chromedriver");
        return;
    };
    let reader = TestEnv::new();
    let machine = TestEnv::new();
    let redis = crate::util::redis_server::RedisServer::start(&reader.path("redis"));
    let url = redis.url();
    let child = machine
        .cmd()
        .args(["--job-run-id", "far", "--no-pty", "-q", "--ship", &url])
        .args(["--", "sh", "-c", QUIT3_JOB])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut job = LiveJob::adopt(&machine, "far", child);
    job.say("\x1b[31mred\x1b[0m from afar");
    wait_until(LIMIT, "the job to reach Redis", || {
        redis.meta_field("far", "started").is_some()
    });
    let srv = Serve::start(&reader, &["--source", &url]);
    let browser = Browser::start(&chromium, &driver, &reader.path("chrome-profile"));
    let base = format!("http://127.0.0.1:{}", srv.port);
    browser.goto(&format!("{base}/"));
    browser.wait_js(
        "the remote job in the list",
        "return !!document.querySelector('a[href=\"job_runs/far\"]');",
    );
    browser.goto(&format!("{base}/job_runs/far"));
    browser.wait_js(
        "the first line",
        "return document.getElementById('rows').textContent.includes('from afar');",
    );
    let red = browser.js(
        "const s=[...document.querySelectorAll('#rows span')].find(e=>e.textContent==='red');\
         return s && getComputedStyle(s).color;",
    );
    assert_eq!(red, "rgb(205, 49, 49)");
    job.say("a live line");
    browser.wait_js(
        "a live line",
        "return document.getElementById('rows').textContent.includes('a live line');",
    );
    job.say("quit");
    assert_eq!(job.finish().code(), Some(3));
    browser.wait_js(
        "the exit badge",
        "return document.body.dataset.complete==='failed'&&document.getElementById('badge').textContent.includes('exit 3');",
    );
}

/// Issue 11, point 5: the job list at `/` stays live without a reload (a job
/// appears, its output counts grow, it turns failed), filters by status, finds
/// jobs by id or command on the server, and pages through 10,000 jobs.
#[test]
fn browser_job_list_updates_live_filters_searches_and_pages_10000_jobs() {
    let Some((chromium, driver)) = browser_tools("browser_job_list...") else {
        return;
    };
    let env = TestEnv::new();
    // One real job, and 9,999 finished ones written as minimal job directories
    // (its metadata under new ids): every 1,000th failed, each with its own
    // command.
    env.run_sh("seed", &["--no-pty", "-q"], "echo seed");
    let seed = env.meta("seed");
    for i in 0..9_999 {
        let id = format!("bulk-{i:05}");
        let mut m = seed.clone();
        m["job_run_id"] = Value::from(id.as_str());
        m["command"] = json!(["make", format!("target-{i}")]);
        if i % 1000 == 0 {
            m["status"] = json!("failed");
            m["exit_code"] = json!(1);
        }
        let dir = env.job_dir(&id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metadata.json"), m.to_string()).unwrap();
    }
    let srv = Serve::start(&env, &[]);
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    let base = format!("http://127.0.0.1:{}", srv.port);
    let ids = "return [...document.querySelectorAll('#rows tr')].map(t => t.dataset.id);";
    let api_ids = |query: &str| -> Vec<Value> {
        let list = get(srv.port, &format!("/api/job_runs?{query}"), &[]).json();
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["job_run_id"].clone())
            .collect()
    };

    // Paging: 100 a page, newest first, the same pages as the API's.
    browser.goto(&format!("{base}/"));
    browser.wait_js(
        "the first page",
        "return document.querySelectorAll('#rows tr').length === 100 \
         && document.getElementById('range').textContent === '1\u{2013}100 of 10000';",
    );
    assert_eq!(browser.js(ids), Value::from(api_ids("limit=100")));
    browser.js("document.getElementById('next').click();");
    browser.wait_js(
        "the second page",
        "return document.getElementById('range').textContent === '101\u{2013}200 of 10000';",
    );
    assert_eq!(
        browser.js(ids),
        Value::from(api_ids("limit=100&offset=100"))
    );
    browser.goto(&format!("{base}/?offset=9900"));
    browser.wait_js(
        "the last page",
        "return document.getElementById('range').textContent === '9901\u{2013}10000 of 10000' \
         && document.getElementById('next').disabled;",
    );
    assert_eq!(
        browser.js(ids),
        Value::from(api_ids("limit=100&offset=9900"))
    );

    // Live: a job appears at the top, its counts grow, it fails; no reload
    // (a mark left on the window stays).
    browser.goto(&format!("{base}/"));
    browser.wait_js(
        "the first page again",
        "return document.querySelectorAll('#rows tr').length === 100 \
         && document.getElementById('live').textContent === 'live';",
    );
    browser.js("window.notReloaded = true;");
    let child = env
        .cmd()
        .args(["--job-run-id", "live-web", "--no-pty", "-q"])
        .args(["--", "sh", "-c", QUIT3_JOB])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut job = LiveJob::adopt(&env, "live-web", child);
    let row = "const r = document.querySelector('#rows tr');";
    browser.wait_js(
        "the new job at the top, running",
        &format!(
            "{row} return r.dataset.id === 'live-web' && r.dataset.status === 'running' \
             && document.querySelectorAll('#rows tr').length === 100;"
        ),
    );
    job.say("hello");
    browser.wait_js(
        "its live counts",
        &format!("{row} return r.querySelector('.out').textContent === '6 B \u{b7} 1 line';"),
    );
    job.say("quit");
    assert_eq!(job.finish().code(), Some(3));
    browser.wait_js(
        "the job turned failed with its exit code",
        &format!(
            "{row} return r.dataset.status === 'failed' && r.querySelector('.exit').textContent === '3' \
             && window.notReloaded === true;"
        ),
    );

    // The status filter: the 10 failed bulk jobs and the live one.
    browser.js(
        "const s = document.getElementById('status'); s.value = 'failed'; \
         s.dispatchEvent(new Event('change'));",
    );
    browser.wait_js(
        "only failed jobs",
        "const r = [...document.querySelectorAll('#rows tr')]; \
         return r.length === 11 && r.every(t => t.dataset.status === 'failed');",
    );
    // A job that comes to match the view (it fails) appears at its top. The
    // test waits until the server has told the running job, so the page sees
    // it start outside the view first.
    let mut events = SseConn::open(srv.port, "/api/events", &[]);
    let child = env
        .cmd()
        .args(["--job-run-id", "late-fail", "--no-pty", "-q"])
        .args(["--", "sh", "-c", QUIT3_JOB])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut late = LiveJob::adopt(&env, "late-fail", child);
    loop {
        let e = events.next().unwrap();
        if e.event == "started" {
            assert!(e.data.contains("\"running\""), "{}", e.data);
            break;
        }
    }
    late.say("quit");
    assert_eq!(late.finish().code(), Some(3));
    browser.wait_js(
        "the newly failed job at the top of the failed view",
        &format!("{row} return r.dataset.id === 'late-fail' && r.dataset.status === 'failed';"),
    );
    // The search box, by command and by id, server side.
    let search = |text: &str, want: &[&str]| {
        browser.js(&format!(
            "const q = document.getElementById('q'); q.value = {}; \
             q.dispatchEvent(new Event('input'));",
            json!(text)
        ));
        browser.wait_js(
            &format!("the jobs matching {text:?}"),
            &format!(
                "return JSON.stringify([...document.querySelectorAll('#rows tr')].map(t => t.dataset.id)) === {};",
                json!(json!(want).to_string())
            ),
        );
    };
    search("TARGET-3000", &["bulk-03000"]);
    browser.js(
        "const s = document.getElementById('status'); s.value = ''; \
         s.dispatchEvent(new Event('change'));",
    );
    search("target-4242", &["bulk-04242"]);
    search("live-w", &["live-web"]);
    search("no such job", &[]);
    assert_eq!(
        browser.js("return document.getElementById('empty').hidden;"),
        Value::Bool(false)
    );
    browser.screenshot(&env.path("list.png.b64"));
}

#[test]
fn browser_starts_over_with_a_note_when_the_job_empties_its_log() {
    let Some((chromium, driver)) = browser_tools("browser_starts_over...") else {
        return;
    };
    let env = TestEnv::new();
    let srv = Serve::start(&env, &[]);
    // Empties its stdout log on the line `T`.
    let script = r#"while IFS= read -r l; do case "$l" in T) : > "$DATABUILD_JOB_LOG_DIR/stdout.log";; *) printf '%s\n' "$l";; esac; done"#;
    let mut job = LiveJob::start_script(&env, "tr", &[], script);
    job.say("old one");
    job.say("old two");
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    browser.goto(&format!("http://127.0.0.1:{}/job_runs/tr", srv.port));
    browser.wait_js(
        "the first lines",
        "return shown().some(l=>l.t==='old two');",
    );
    job.say("T");
    wait_until(LIMIT, "the log to be emptied", || {
        env.stdout_log("tr").is_empty()
    });
    job.say("new one");
    browser.wait_js(
        "the new log, numbered from 1, under a note",
        "const s=shown();return s.length===1&&s[0].t==='new one'&&s[0].n===1\
         &&items.some(x=>x.note&&x.t.includes('stdout log was truncated'));",
    );
    job.say("new two");
    browser.wait_js(
        "the next line live",
        "return shown().map(l=>l.t).join('|')==='new one|new two';",
    );
    assert!(job.finish().success());
}

/// Section lines a job crafts to make the page's parser backtrack (a GitLab
/// `section_start:` whose 60 KB name is followed by a CR, ten of them) leave
/// the page working: it loads, shows the job's last line, still folds a real
/// section, and takes a title with a CR in it. And behind a token, the link
/// back to the job list carries the token too.
#[test]
fn browser_survives_section_lines_made_to_backtrack_and_keeps_the_token_on_its_links() {
    let Some((chromium, driver)) = browser_tools("browser_survives_section_lines...") else {
        return;
    };
    let env = TestEnv::new();
    let script = r#"i=0; n=$(printf 'a%.0s' $(seq 60000)); while [ $i -lt 10 ]; do printf 'section_start:1:%s\r\r\n' "$n"; i=$((i + 1)); done
printf 'section_start:1700000000:crsec[collapsed=true]\r\033[0KTitle\rwith CR\n'; echo 'inside'; printf 'section_end:1700000001:crsec\r\033[0K\n'; echo 'the last line'"#;
    assert_ok(&env.run_sh("redos", &["--no-pty", "-q"], script));
    std::fs::write(env.path("tok"), "sekret\n").unwrap();
    let srv = Serve::start(&env, &["--token-file", env.path("tok").to_str().unwrap()]);
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    browser.goto(&format!(
        "http://127.0.0.1:{}/job_runs/redos?token=sekret",
        srv.port
    ));
    browser.wait_js(
        "the page, ended, with its last line",
        "return document.body.dataset.complete==='succeeded'&&shown().some(l=>l.t==='the last line');",
    );
    assert_eq!(
        browser.js("return sections.filter(s=>s.id==='crsec').map(s=>s.title);"),
        serde_json::json!(["Titlewith CR"])
    );
    assert_eq!(
        browser.js("return shown().some(l=>l.t==='inside');"),
        false,
        "the collapsed section folds"
    );
    let jobs = browser.js("return document.querySelector('h1 a').href;");
    assert!(jobs.as_str().unwrap().ends_with("/?token=sekret"), "{jobs}");
}

/// A job whose metadata.json it spoiled settles as "damaged" with the
/// server's reason instead of reconnecting every 10 s for ever; sections
/// nest at most 32 deep, however many a job opens without closing.
#[test]
fn browser_settles_on_a_damaged_job_and_caps_section_nesting() {
    let Some((chromium, driver)) = browser_tools("browser_settles_on_a_damaged_job...") else {
        return;
    };
    let env = TestEnv::new();
    assert_ok(&env.run_sh("spoiled", &["--no-pty", "-q"], "echo fine"));
    std::fs::write(env.job_dir("spoiled").join("metadata.json"), b"{not json").unwrap();
    assert_ok(&env.run_sh(
        "nested",
        &["--no-pty", "-q"],
        "i=0; while [ $i -lt 100 ]; do echo '::group::g'; i=$((i + 1)); done; echo last",
    ));
    let srv = Serve::start(&env, &[]);
    let browser = Browser::start(&chromium, &driver, &env.path("chrome-profile"));
    browser.goto(&format!("http://127.0.0.1:{}/job_runs/spoiled", srv.port));
    browser.wait_js(
        "the damaged badge and the reason",
        "return document.body.dataset.complete==='damaged'\
         &&document.getElementById('badge').textContent==='damaged'\
         &&document.getElementById('note').textContent.includes('metadata.json');",
    );
    browser.goto(&format!("http://127.0.0.1:{}/job_runs/nested", srv.port));
    browser.wait_js(
        "the end",
        "return document.body.dataset.complete==='succeeded';",
    );
    assert_eq!(browser.js("return sections.length;"), 32);
}
