//! The log: stderr through a background writer, one `key=value` line per event.
//!
//! The access log is `info`, the default level, so its cost is paid on every request
//! (bench/PROFILE.md, "\[perf\] log line and session work"). What keeps it low:
//! - [`Line`] writes the text line itself: the timestamp's date and time formatted once per
//!   second per thread, then level, target and fields straight into tracing-subscriber's
//!   reused per-thread buffer. The line is byte for byte what tracing-subscriber's default
//!   `Full` format writes without colours; anything that format would write differently (ANSI
//!   colours on a terminal, a span around the event, a record from the `log` crate) is handed
//!   to that format itself.
//! - [`PlainFields`] writes a plain string or integer field as is, where tracing-subscriber's
//!   default formats every field through `Debug`.
//! - [`Batch`]: the request path appends the finished line to one shared buffer (no
//!   allocation per line); a background thread writes the whole buffer with one `write` per
//!   batch and lingers a millisecond before each, so a busy proxy wakes it about once per
//!   millisecond rather than once per line.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{RecordFields, VisitOutput as _};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime as _;
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber: `RUST_LOG` (default `info`), ANSI colours on a terminal only.
/// Keep the guard until exit: dropping it writes the lines still queued.
///
/// Not lossy: if stderr falls behind, requests wait rather than lines being dropped.
pub fn init(format: crate::config::LogFormat) -> LogGuard {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = Batch::spawn(std::io::stderr());
    match format {
        crate::config::LogFormat::Text => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(ansi)
                .fmt_fields(PlainFields)
                .event_format(Line::default())
                .init();
        }
        // tracing-subscriber's own JSON: the event's fields at the top level of each object.
        crate::config::LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .init(),
    }
    guard
}

/// The text subscriber [`init`] installs, writing to `writer` without colours: for benchmarks
/// and tests that need the real line without a global subscriber.
pub fn text_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .fmt_fields(PlainFields)
        .event_format(Line::default())
        .finish()
}

/// The text line of an event: `2026-01-02T03:04:05.678901Z  INFO target: message k=v ...`,
/// exactly as tracing-subscriber's default (`Full`) format writes it without colours, but
/// without formatting the date and time anew for every line. See the module doc.
#[derive(Debug)]
pub struct Line {
    /// For what this format does not write itself.
    full: Format,
}

impl Default for Line {
    fn default() -> Self {
        // From now on an access line is worth prewriting: this format will copy it.
        LINE_IN_USE.store(true, Ordering::Relaxed);
        Line {
            full: Format::default(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() || event.is_log() || ctx.event_scope().is_some() {
            return self.full.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        timestamp(&mut writer)?;
        writer.write_str(match *meta.level() {
            Level::TRACE => "TRACE ",
            Level::DEBUG => "DEBUG ",
            Level::INFO => " INFO ",
            Level::WARN => " WARN ",
            Level::ERROR => "ERROR ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        if !write_prewritten(&mut writer, meta)? {
            ctx.format_fields(writer.by_ref(), event)?;
        }
        writer.write_char('\n')
    }
}

/// Set once a [`Line`] exists: without one (the JSON format), nothing would copy a prewritten
/// line, so [`prewrite`] does not write it.
static LINE_IN_USE: AtomicBool = AtomicBool::new(false);

/// The access line's target (`proxy/log.rs`): with its field names, what tells [`Line`] an
/// event is the one whose fields were prewritten.
pub const ACCESS_TARGET: &str = "session_proxy::proxy::log";

/// Logs the line of a served request, the one every request but a failed one logs: its fields
/// are written ahead (`prewrite`) when the line will be written at all, and the event carries
/// them too, for any other format or subscriber. The proxy and `benches/hot_path.rs` both call
/// this, so the benchmark measures the line the proxy writes.
pub fn served(f: &AccessFields<'_>) {
    // The global maximum (one load), not `enabled!` (a call into the filter): a filter that
    // drops this target alone at `info` costs a prewrite for nothing, never a wrong line.
    let _prewritten = if tracing::Level::INFO <= tracing::level_filters::LevelFilter::current() {
        prewrite(f)
    } else {
        None
    };
    tracing::info!(
        target: ACCESS_TARGET,
        message = f.message,
        method = f.method,
        path = f.path,
        status = f.status,
        latency_us = f.latency_us,
        session = f.session,
        saved = f.saved,
        request_id = f.request_id
    );
}

/// The fields of the access line (`proxy/log.rs`), in the order of its event.
#[derive(Debug, Clone, Copy)]
pub struct AccessFields<'a> {
    pub message: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub latency_us: u64,
    pub session: &'a str,
    pub saved: &'a str,
    pub request_id: &'a str,
}

impl AccessFields<'_> {
    /// The event's field names, in order: with [`ACCESS_TARGET`], what tells [`Line`] it is
    /// this one.
    const NAMES: [&'static str; 8] = [
        "message",
        "method",
        "path",
        "status",
        "latency_us",
        "session",
        "saved",
        "request_id",
    ];
}

/// The access line's fields as text, waiting for their event to be formatted on this thread.
struct Prewrite {
    /// Whether `text` waits for its event.
    waiting: bool,
    text: String,
}

thread_local! {
    static PREWRITTEN: RefCell<Prewrite> = const {
        RefCell::new(Prewrite { waiting: false, text: String::new() })
    };
}

/// The access line's fields written ahead of their event, exactly as [`PlainFields`] would
/// write them; [`Line`] copies them into the line instead of visiting the event's eight fields
/// one `dyn Visit` call at a time (about 3k instructions a line). Whatever happens to the
/// event (filtered out, formatted by another format, or inside a span, where [`Line`] hands
/// over), the text is dropped with this guard, so no other event can pick it up.
#[must_use = "the prewritten fields are dropped with the guard: emit the event first"]
pub struct Prewritten(());

impl Drop for Prewritten {
    fn drop(&mut self) {
        PREWRITTEN.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.waiting = false;
            }
        });
    }
}

/// Writes `fields` ahead of the access-line event that carries them, when a [`Line`] will
/// format it and every value is bare (anything to quote goes through the visitor, which knows
/// how). Emit the event while the guard lives.
fn prewrite(fields: &AccessFields<'_>) -> Option<Prewritten> {
    if !LINE_IN_USE.load(Ordering::Relaxed) {
        return None;
    }
    let all_bare = [
        fields.message,
        fields.method,
        fields.path,
        fields.session,
        fields.saved,
        fields.request_id,
    ]
    .iter()
    .all(|v| is_bare(v));
    if !all_bare {
        return None;
    }
    PREWRITTEN.with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let text = &mut p.text;
        text.clear();
        let (mut status, mut latency) = (itoa::Buffer::new(), itoa::Buffer::new());
        for (name, value) in [
            ("", fields.message),
            (" method=", fields.method),
            (" path=", fields.path),
            (" status=", status.format(fields.status)),
            (" latency_us=", latency.format(fields.latency_us)),
            (" session=", fields.session),
            (" saved=", fields.saved),
            (" request_id=", fields.request_id),
        ] {
            text.push_str(name);
            text.push_str(value);
        }
        p.waiting = true;
        Some(Prewritten(()))
    })
}

/// Writes the prewritten fields if they are this event's; `false` if not (nothing written).
fn write_prewritten(
    writer: &mut Writer<'_>,
    meta: &tracing::Metadata<'_>,
) -> Result<bool, fmt::Error> {
    PREWRITTEN.with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return Ok(false);
        };
        let fields = meta.fields();
        if !p.waiting
            || meta.target() != ACCESS_TARGET
            || fields.len() != AccessFields::NAMES.len()
            || !fields.iter().map(|f| f.name()).eq(AccessFields::NAMES)
        {
            return Ok(false);
        }
        p.waiting = false;
        writer.write_str(&p.text).map(|()| true)
    })
}

/// `YYYY-MM-DDTHH:MM:SS.` of one second, as tracing-subscriber's `SystemTime` timer writes it.
struct Second {
    unix: u64,
    text: String,
}

thread_local! {
    /// The second this thread last logged in.
    static SECOND: std::cell::RefCell<Second> = const {
        std::cell::RefCell::new(Second { unix: u64::MAX, text: String::new() })
    };
}

/// The date and time of `unix`, up to the seconds' `.`; `None` outside years 0 to 9999, which
/// tracing-subscriber writes with a sign.
fn second_text(unix: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).ok()?).ok()?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// Writes the timestamp and the space after it: the cached second, then the microseconds.
fn timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
        return full_timestamp(writer);
    };
    let unix = since.as_secs();
    let cached = SECOND.with(|cell| {
        let Ok(mut second) = cell.try_borrow_mut() else {
            return Ok(false);
        };
        if second.unix != unix {
            let Some(text) = second_text(unix) else {
                return Ok(false);
            };
            *second = Second { unix, text };
        }
        writer.write_str(&second.text).map(|()| true)
    })?;
    if !cached {
        return full_timestamp(writer);
    }
    let micros = since.subsec_micros();
    let mut digits = [b'0', b'0', b'0', b'0', b'0', b'0', b'Z', b' '];
    let mut rest = micros;
    for d in digits[..6].iter_mut().rev() {
        // A digit: below 10, so the cast cannot truncate.
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    writer.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// The timestamp as tracing-subscriber writes it, for the cases the cache does not cover.
fn full_timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    if tracing_subscriber::fmt::time::SystemTime
        .format_time(writer)
        .is_err()
    {
        writer.write_str("<unknown time>")?;
    }
    writer.write_char(' ')
}

/// The default field format (`name=value`, separated by spaces, the message first and bare),
/// except that a string made only of characters that need no quoting, and any integer or bool,
/// is written directly instead of through `Debug`. Everything else (text with spaces, quotes,
/// backslashes or control characters; errors; `Debug` values) goes to tracing-subscriber's own
/// visitor, which quotes it and escapes terminal control sequences, so a client-supplied value
/// can never forge a line or a field.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

/// Printable ASCII other than space, `"` and `\`: nothing a reader could take for a separator,
/// a quote or an escape.
fn is_bare(value: &str) -> bool {
    // A fold, not `all`: without the early exit the loop vectorizes.
    !value.is_empty()
        && value.bytes().fold(true, |bare, b| {
            bare & (b.is_ascii_graphic() & (b != b'"') & (b != b'\\'))
        })
}

impl PlainVisitor<'_> {
    /// Writes ` name=` (or nothing before the message) and then `value`, which needs no quoting.
    fn bare(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.write_bare(field, value);
        }
        self.first = false;
    }

    fn write_bare(&mut self, field: &Field, value: &str) -> fmt::Result {
        if !self.first {
            self.writer.write_char(' ')?;
        }
        if field.name() != "message" {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
        }
        self.writer.write_str(value)
    }

    /// Hands one field to tracing-subscriber's visitor, for its quoting and escaping.
    fn default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.first);
        record(&mut visitor);
        self.result = visitor.finish();
        self.first = false;
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if is_bare(value) {
            self.bare(field, value);
        } else {
            self.default(|v| v.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.bare(field, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.bare(field, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.bare(field, if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.default(|v| v.record_debug(field, value));
    }
}

/// Past this many bytes waiting, a line waits for the writer (the log is not lossy). About
/// 5,000 access lines: a millisecond's linger at any rate a proxy serves.
const MAX_PENDING: usize = 1 << 20;

/// How long the writer lets lines gather after the first one of a batch.
const LINGER: Duration = Duration::from_millis(1);

/// A [`MakeWriter`] whose lines a background thread writes in batches (see the module doc).
/// In order, never dropped; a line logged after the [`LogGuard`] is dropped is written at once.
#[derive(Clone)]
pub struct Batch {
    shared: Arc<Shared>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch").finish_non_exhaustive()
    }
}

struct Shared {
    pending: Mutex<Pending>,
    /// The writer waits here for a first line (or a full buffer, or the close).
    ready: Condvar,
    /// Lines wait here for room below [`MAX_PENDING`].
    room: Condvar,
    /// Where the lines go; held by whoever is writing to it.
    out: Mutex<Box<dyn io::Write + Send>>,
}

struct Pending {
    lines: Vec<u8>,
    /// The writer is waiting for a first line: the line that ends that wait wakes it (and only
    /// that one: a wake-up is a system call).
    idle: bool,
    /// Lines waiting for room.
    blocked: usize,
    /// The guard was dropped: the writer writes what is left and stops.
    closed: bool,
    /// The writer has stopped (or never started): lines are written by whoever logs them.
    direct: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held but a failed write, which leaves the state
    // whole: use it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Batch {
    /// The writer and the guard that flushes it; the thread writes to `out`. If the thread
    /// cannot be started, every line is written to `out` as it is logged.
    pub fn spawn(out: impl io::Write + Send + 'static) -> (Batch, LogGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                lines: Vec::new(),
                idle: false,
                blocked: 0,
                closed: false,
                direct: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(Box::new(out)),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("session-proxy-log".into())
            .spawn(move || {
                // Should the writer ever panic, lines are written by their callers from then
                // on: a request must never wait for a writer that is gone.
                let _exit = WriterGone(worker.clone());
                worker.run();
            });
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(e) => {
                lock(&shared.pending).direct = true;
                let _ = writeln!(
                    lock(&shared.out),
                    "session-proxy: no log writer thread ({e}); writing each line as it comes"
                );
                None
            }
        };
        let guard = LogGuard {
            shared: shared.clone(),
            thread,
        };
        (Batch { shared }, guard)
    }

    fn push(&self, line: &[u8]) -> io::Result<()> {
        let shared = &*self.shared;
        let mut p = lock(&shared.pending);
        while p.lines.len() >= MAX_PENDING && !p.direct {
            p.blocked += 1;
            shared.ready.notify_one();
            p = shared.room.wait(p).unwrap_or_else(PoisonError::into_inner);
            p.blocked -= 1;
        }
        if p.direct {
            drop(p);
            let mut out = lock(&shared.out);
            return out.write_all(line).and_then(|()| out.flush());
        }
        p.lines.extend_from_slice(line);
        let wake = std::mem::replace(&mut p.idle, false);
        drop(p);
        if wake {
            shared.ready.notify_one();
        }
        Ok(())
    }
}

/// Dropped when the writer thread ends, however it ends.
struct WriterGone(Arc<Shared>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        lock(&self.0.pending).direct = true;
        self.0.room.notify_all();
    }
}

impl Shared {
    /// The writer thread: waits for a line, lets more gather for [`LINGER`], writes them all.
    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            {
                let mut p = lock(&self.pending);
                while p.lines.is_empty() && !p.closed {
                    p.idle = true;
                    p = self.ready.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                p.idle = false;
                if !p.closed && p.blocked == 0 {
                    p = self
                        .ready
                        .wait_timeout(p, LINGER)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if p.lines.is_empty() && p.closed {
                    // Under the lock: a line logged from now on is written by its caller,
                    // after every line before it.
                    p.direct = true;
                    self.room.notify_all();
                    break;
                }
                std::mem::swap(&mut p.lines, &mut batch);
                if p.blocked > 0 {
                    self.room.notify_all();
                }
            }
            let mut out = lock(&self.out);
            // A failed write (stderr closed) loses this batch, never the proxy's requests.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            drop(out);
            batch.clear();
            if batch.capacity() > 2 * MAX_PENDING {
                batch = Vec::new();
            }
        }
        let _ = lock(&self.out).flush();
    }
}

impl io::Write for &Batch {
    /// Takes the whole of `buf`: tracing-subscriber hands over one finished line per call.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batch {
    type Writer = &'a Batch;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Writes the lines still queued, and stops the writer, when dropped.
#[must_use = "dropping the guard stops the log's writer"]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The line `event` produces with `fields`, without timestamp, level or target.
    fn line<N>(fields: N, event: impl FnOnce()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = out.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).trim_end().to_owned()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `event` produces through the subscriber [`init`] installs (no colours), and
    /// through tracing-subscriber's default format with the same fields, timestamps included.
    fn both_lines(event: impl Fn()) -> (String, String) {
        let ours = Arc::new(Mutex::new(Vec::new()));
        let sink = ours.clone();
        let subscriber = text_subscriber(EnvFilter::new("trace"), move || Sink(sink.clone()));
        tracing::subscriber::with_default(subscriber, &event);
        let theirs = Arc::new(Mutex::new(Vec::new()));
        let sink = theirs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .fmt_fields(PlainFields)
            .finish();
        tracing::subscriber::with_default(subscriber, &event);
        let text = |b: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8(b.lock().map(|b| b.clone()).unwrap_or_default()).unwrap()
        };
        (text(&ours), text(&theirs))
    }

    /// `Line` writes what tracing-subscriber's own format writes, byte for byte but the
    /// microseconds (taken a moment apart): every level, a span around the event (handed
    /// over), a record of the `log` crate (handed over).
    #[test]
    fn the_line_is_the_default_formats_line() {
        let _ = tracing_log::LogTracer::init();
        let event = || {
            tracing::info!(
                method = "GET",
                path = "/a",
                status = 200u16,
                latency_us = 17u64,
                request_id = "0123abcd",
                spaced = "two words",
                "request"
            );
            tracing::trace!("t");
            tracing::debug!(n = -1i64, "d");
            tracing::warn!(error = %"x y", "request failed");
            tracing::error!(ok = false, "e");
            tracing::info_span!("conn", peer = "127.0.0.1")
                .in_scope(|| tracing::info!(k = 1u64, "in a span"));
            log::info!(target: "some::crate", "from log {}", 1);
        };
        // Retried when the two runs straddle a second.
        for _ in 0..3 {
            let (ours, theirs) = both_lines(event);
            assert_eq!(ours.lines().count(), 7, "{ours}");
            let mut same_second = true;
            for (a, b) in ours.lines().zip(theirs.lines()) {
                // `2026-01-02T03:04:05.` then six digits of microseconds and `Z `.
                assert_eq!(a.len(), b.len(), "{a}\n{b}");
                same_second &= a[..20] == b[..20];
                assert!(a[20..26].bytes().all(|c| c.is_ascii_digit()), "{a}");
                assert_eq!(a[26..], b[26..]);
            }
            if same_second {
                let first = ours.lines().next().unwrap();
                assert!(
                    first.ends_with(
                        "Z  INFO session_proxy::logging::tests: request method=GET path=/a \
                         status=200 latency_us=17 request_id=0123abcd spaced=\"two words\""
                    ),
                    "{first}"
                );
                // As today: PlainFields writes the `log.` fields the default visitor would skip.
                assert!(
                    ours.contains("Z  INFO some::crate: from log 1 log.target="),
                    "{ours}"
                );
                assert!(
                    ours.contains("conn{peer=127.0.0.1}: session_proxy"),
                    "{ours}"
                );
                return;
            }
        }
        panic!("never the same second thrice");
    }

    /// `proxy/log.rs` passes the message as a `message = "..."` string field: the text line and
    /// the JSON object are those of a format-string message.
    #[test]
    fn a_message_field_writes_what_a_message_string_writes() {
        let field = || tracing::info!(message = "request", a = 1u64, b = "x y");
        let string = || tracing::info!(a = 1u64, b = "x y", "request");
        let text = |event: &dyn Fn()| {
            let (ours, theirs) = both_lines(event);
            (ours[27..].to_owned(), theirs[27..].to_owned())
        };
        assert_eq!(text(&field), text(&string));
        assert!(text(&field).0.ends_with(": request a=1 b=\"x y\"\n"));
        let json = |event: &dyn Fn()| {
            let out = Arc::new(Mutex::new(Vec::new()));
            let sink = out.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || Sink(sink.clone()))
                .json()
                .flatten_event(true)
                .finish();
            tracing::subscriber::with_default(subscriber, event);
            let bytes = out.lock().unwrap().clone();
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v.as_object_mut().unwrap().remove("timestamp");
            v
        };
        assert_eq!(json(&field), json(&string));
        assert_eq!(json(&field)["message"], "request");
    }

    #[test]
    fn the_cached_second_is_the_default_timers() {
        for unix in [
            0,
            951_782_400,
            1_767_225_599,
            4_102_444_800,
            253_402_300_799,
        ] {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(unix);
            let t = time::OffsetDateTime::from(at);
            let expect = t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            // RFC 3339 without fractions: `...:SSZ`; ours ends in the `.` before them.
            assert_eq!(
                second_text(unix).unwrap(),
                format!("{}.", &expect[..19]),
                "{unix}"
            );
        }
        assert_eq!(second_text(253_402_300_800), None);
    }

    /// Writes that take a while: the log writer falls behind.
    struct Slow(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(2));
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Not lossy: more than `MAX_PENDING` bytes from four threads at once into a slow writer
    /// all arrive, each thread's in order, whole lines; lines logged after the guard is
    /// dropped are written too.
    #[test]
    fn the_batch_writer_loses_no_line_and_keeps_their_order() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (batch, guard) = Batch::spawn(Slow(out.clone()));
        let per_thread = 2 * MAX_PENDING / 100 / 4 + 1000;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let batch = batch.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let line = format!("{t} {i:08} {}\n", "x".repeat(80));
                        std::io::Write::write_all(&mut &batch, line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        std::io::Write::write_all(&mut &batch, b"after\n").unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        let mut lines = text.lines();
        for line in lines.by_ref().take(4 * per_thread) {
            let (t, rest) = line.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            assert_eq!(rest[..8].parse::<usize>().unwrap(), next[t], "{line}");
            assert_eq!(rest.len(), 8 + 1 + 80, "{line}");
            next[t] += 1;
        }
        assert_eq!(next, [per_thread; 4]);
        assert_eq!(lines.collect::<Vec<_>>(), ["after"]);
    }

    /// Panics on its first write, then keeps what it is given.
    struct PanicsOnce(Arc<Mutex<Vec<u8>>>, bool);

    impl std::io::Write for PanicsOnce {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !std::mem::replace(&mut self.1, true) {
                panic!("a writer that fails hard");
            }
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_writer_thread_that_panicked_never_blocks_a_line() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (batch, guard) = Batch::spawn(PanicsOnce(out.clone(), false));
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Twice the queue's limit: without a writer, the second half would wait forever.
            for i in 0..(2 * MAX_PENDING / 100 + 100) {
                let line = format!("{i:08} {}\n", "x".repeat(90));
                std::io::Write::write_all(&mut &batch, line.as_bytes()).unwrap();
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a line waited for a writer that had panicked");
        drop(guard);
        assert!(!out.lock().unwrap().is_empty());
    }

    #[test]
    fn plain_values_are_bare_and_the_rest_as_tracing_writes_it() {
        let event = || {
            let error = std::io::Error::other("disk \"full\"");
            tracing::info!(
                method = "GET",
                path = "/a/b?",
                status = 200u16,
                latency_us = 17u64,
                delta = -3i64,
                new = true,
                empty = "",
                spaced = "two words",
                quoted = "say \"hi\"",
                escape = "\u{1b}[31mred",
                error = &error as &(dyn std::error::Error + 'static),
                debug = ?Some(1),
                "request"
            )
        };
        assert_eq!(
            line(PlainFields, event),
            "request method=GET path=/a/b? status=200 latency_us=17 delta=-3 new=true \
             empty=\"\" spaced=\"two words\" quoted=\"say \\\"hi\\\"\" \
             escape=\"\\u{1b}[31mred\" error=disk \"full\" debug=Some(1)"
        );
    }

    #[test]
    fn a_message_with_spaces_is_written_as_the_default_writes_it() {
        let event = || tracing::info!(deadline = "30s", "shutting down: no new connections");
        let default = line(tracing_subscriber::fmt::format::DefaultFields::new(), event);
        assert_eq!(
            default,
            "shutting down: no new connections deadline=\"30s\""
        );
        // The one difference: a plain string field loses its quotes.
        assert_eq!(
            line(PlainFields, event),
            "shutting down: no new connections deadline=30s"
        );
    }

    /// The prewritten line is the one the fields' visitor writes, byte for byte (the timestamps'
    /// microseconds aside), for bare values and for values it must hand to the visitor instead.
    #[test]
    fn the_prewritten_line_is_the_visitors_line() {
        let id = "6f1c0e2b9a8d4f3e2d1c0b9a8f7e6d5c";
        let base = AccessFields {
            message: "request",
            method: "GET",
            path: "/account/settings",
            status: 200,
            latency_us: 1234,
            session: "existing",
            saved: "updated",
            request_id: id,
        };
        let cases = [
            base,
            AccessFields {
                method: "PURGE",
                path: "/",
                status: 404,
                latency_us: 0,
                session: "new",
                saved: "created",
                request_id: "req-1.A_b",
                ..base
            },
            AccessFields {
                latency_us: u64::MAX,
                status: 101,
                ..base
            },
            AccessFields {
                path: "/two words",
                ..base
            },
            AccessFields {
                path: "/say\"hi\"\\",
                ..base
            },
            AccessFields {
                path: "/caf\u{e9}",
                ..base
            },
            AccessFields {
                session: "",
                ..base
            },
        ];
        for fields in cases {
            // Retried when the two runs straddle a second.
            let (ours, theirs) = (0..3)
                .map(|_| both_lines(|| served(&fields)))
                .find(|(a, b)| a.get(..20) == b.get(..20))
                .unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours}{theirs}");
            assert_eq!(ours[26..], theirs[26..]);
            assert!(ours[26..].starts_with("Z  INFO session_proxy::proxy::log: request "));
        }
        // A prewritten line is used once, by its own event only: not by others of its target.
        let (ours, _) = both_lines(|| {
            let _p = prewrite(&base);
            tracing::info!(target: ACCESS_TARGET, message = "another", status = 1u64);
            tracing::info!(
                target: ACCESS_TARGET,
                message = "eight",
                method = "GET",
                path = "/",
                status = 1u64,
                latency_us = 1u64,
                session = "new",
                saved = "none",
                id = "x"
            );
            tracing::info!(target: ACCESS_TARGET, message = "after", status = 2u64);
        });
        assert!(ours.contains(": another status=1\n"), "{ours}");
        assert!(
            ours.contains(": eight method=GET path=/ status=1"),
            "{ours}"
        );
        assert!(ours.contains(": after status=2\n"), "{ours}");
    }
}
