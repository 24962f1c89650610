//! Logging for a service: one line per event to stdout (journald keeps it),
//! colours only on a terminal, level from `HEARTH_LOG` (default `info`).

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// Sets up logging; called before the config is read, so config errors are
/// logged like everything else.
pub fn init() {
    // rumqttd logs every client disconnect as an error; the edge logs
    // sessions itself. `HEARTH_LOG=info,rumqttd=debug` brings them back.
    let filter = EnvFilter::try_from_env("HEARTH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off,rustls=error"));
    // Colours only for a person at a terminal: never in the journal, a
    // pipe or a file, and never when NO_COLOR (no-color.org) is set.
    let ansi = wants_colour(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_target(false)
        .with_writer(|| OneLine(std::io::stdout()))
        .try_init();
}

/// Whether log lines may carry ANSI colours.
fn wants_colour(stdout_is_terminal: bool, no_color: bool) -> bool {
    stdout_is_terminal && !no_color
}

/// A writer that keeps every log event on one line: the formatter hands
/// it one whole event per write, and newlines inside it (a multi-line
/// error, a client-supplied string) are escaped as `\n`, so a reader of
/// the journal or a log file never mistakes a continuation for an event.
#[derive(Debug)]
pub struct OneLine<W>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let mut line = Vec::with_capacity(buf.len() + 8);
        for &byte in body {
            match byte {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                other => line.push(other),
            }
        }
        line.push(b'\n');
        // One write_all per event: lines from different threads never mix.
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_on_one_line() {
        let mut out = OneLine(Vec::new());
        out.write_all(b"INFO first\nsecond\r\n").unwrap();
        out.write_all(b"INFO plain\n").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "INFO first\\nsecond\\r\nINFO plain\n"
        );
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(wants_colour(true, false));
        assert!(!wants_colour(false, false));
        assert!(!wants_colour(true, true));
    }
}
