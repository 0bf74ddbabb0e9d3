//! Progress bars for `batch` and `map` (the `progress` feature, on by default): done and
//! total (or done alone for an input of unknown length), rate and ETA, drawn on stderr.

/// When a pool draws progress bars.
#[cfg_attr(not(feature = "progress"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    #[default]
    Off,
    /// Only when stderr is a terminal.
    Auto,
    /// Always: on a terminal as a bar, elsewhere as a line a second.
    Forced,
}

/// One bar, or nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bar {
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

#[cfg(feature = "progress")]
impl Bar {
    pub(crate) fn start(mode: Mode, total: Option<u64>, name: &str) -> Self {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        let target = match mode {
            Mode::Off => return Bar { bar: None },
            Mode::Auto if !terminal => return Bar { bar: None },
            Mode::Auto => ProgressDrawTarget::stderr(),
            Mode::Forced if terminal => ProgressDrawTarget::stderr(),
            Mode::Forced => ProgressDrawTarget::term_like_with_hz(Box::new(Lines), 1),
        };
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::with_draw_target(Some(n), target),
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})",
            ),
            None => (
                ProgressBar::with_draw_target(None, target),
                "{prefix} [{elapsed_precise}] {spinner} {pos} done ({per_sec})",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(name.to_string());
        Bar { bar: Some(bar) }
    }

    /// `n` more tasks are done.
    pub(crate) fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
            if bar.length().is_some_and(|len| bar.position() >= len) {
                bar.finish();
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(not(feature = "progress"))]
impl Bar {
    pub(crate) fn start(_mode: Mode, _total: Option<u64>, _name: &str) -> Self {
        Bar {}
    }

    pub(crate) fn inc(&self, _n: u64) {}

    pub(crate) fn finish(&self) {}
}

/// A draw target for a stderr that is not a terminal: each redraw is one plain line.
#[cfg(feature = "progress")]
#[derive(Debug)]
struct Lines;

#[cfg(feature = "progress")]
impl indicatif::TermLike for Lines {
    fn width(&self) -> u16 {
        100
    }

    fn move_cursor_up(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        use std::io::Write;
        if s.is_empty() {
            return Ok(());
        }
        writeln!(std::io::stderr().lock(), "{s}")
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.write_line(s)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}
