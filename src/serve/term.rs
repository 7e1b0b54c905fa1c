//! What a terminal shows for one log line holding carriage returns (SPEC §5: "a
//! bare CR is resolved as a terminal would"), in time and memory linear in the
//! line whatever it holds: a job controls its output, and a hostile or broken
//! one (thousands of SGR sequences, far cursor moves, repeated erases) must not
//! make each event cost the server megabytes or seconds (issue "Hostile files,
//! full disks, big markers", point 7).

use std::borrow::Cow;
use std::collections::HashMap;

/// Longest parameter string of one CSI sequence that is applied; longer ones
/// are dropped whole. Real sequences are a few bytes (`38;2;255;255;255` is 16).
const MAX_CSI_PARAMS: usize = 64;

/// Most SGR sequences kept in one style. Repeats are coalesced (an SGR sets
/// attributes, so applying one again only moves it last), so only a line
/// cycling through more distinct sequences than this without a reset reaches
/// it; the oldest is then dropped. Real output sets a handful at a time.
const MAX_SGR_PARTS: usize = 16;

/// Widest line resolved: the cursor is kept within this many columns, as a
/// terminal keeps it within its width. The same as the event cap, since no
/// more text than that is shown anyway.
const MAX_COLS: usize = super::sse::MAX_LINE_BYTES;

/// Most bytes of distinct styles remembered for one line; past it new styles
/// show as plain text. A line can only reach it by switching among thousands
/// of styles, and this bounds what it costs.
const MAX_STYLE_BYTES: usize = 256 * 1024;

/// Most bytes of style sequences written into one rendered line; past it the
/// rest of the line is plain text, so the output stays within a small multiple
/// of the text however the cells alternate between styles.
const MAX_STYLE_OUTPUT: usize = 64 * 1024;

/// What rendering a line cost, for tests that prove the bounds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Work {
    /// Elementary steps: characters read, cells written or padded, parameter
    /// and style bytes copied, cells checked when the line is put together.
    pub steps: usize,
    /// Bytes held by the distinct styles of the line.
    pub style_bytes: usize,
}

/// One cell of the line: its character, the style it was written in (an index
/// into the interned styles, 0 = plain) and when it was written (the count of
/// writes so far; 0 = never written, a blank the cursor skipped over).
#[derive(Clone, Copy)]
struct Cell {
    ch: char,
    style: usize,
    at: u32,
}

/// Erase-in-line operations, applied when the line is put together rather
/// than cell by cell as they come, so a line of a thousand `ESC[2K` costs a
/// thousand steps, not a thousand times its width. Each list is in the order
/// the operations came.
#[derive(Default)]
struct Erases {
    /// `ESC[1K` / `ESC[2K`: cells before `.1` written at or before write `.0`.
    before: Vec<(u32, usize)>,
    /// `ESC[K`: cells from `.1` on written at or before write `.0`.
    from: Vec<(u32, usize)>,
}

/// The current SGR style: the sequences in force since the last reset, repeats
/// coalesced, and its interned index once a cell was written in it.
#[derive(Default)]
struct Style {
    parts: Vec<String>,
    interned: Option<usize>,
}

impl Style {
    fn apply(&mut self, params: &str, work: &mut Work) {
        work.steps += params.len() + 1;
        self.interned = None;
        if params.is_empty() || params == "0" {
            self.parts.clear();
            return;
        }
        if params.starts_with("0;") || params.starts_with(';') {
            // Starts with a reset: nothing before it matters.
            self.parts.clear();
        }
        if let Some(i) = self.parts.iter().position(|p| p == params) {
            self.parts.remove(i);
        }
        if self.parts.len() == MAX_SGR_PARTS {
            self.parts.remove(0);
        }
        work.steps += self.parts.len();
        self.parts.push(params.to_string());
    }
}

/// The distinct styles of a line, each once, as the escape sequences that set
/// it from plain.
struct Styles {
    list: Vec<String>,
    index: HashMap<String, usize>,
    bytes: usize,
}

impl Styles {
    fn new() -> Styles {
        Styles {
            list: vec![String::new()],
            index: HashMap::new(),
            bytes: 0,
        }
    }

    fn intern(&mut self, style: &mut Style, work: &mut Work) -> usize {
        if let Some(i) = style.interned {
            return i;
        }
        let mut seq = String::new();
        for p in &style.parts {
            seq.push_str("\u{1b}[");
            seq.push_str(p);
            seq.push('m');
        }
        work.steps += seq.len() + 1;
        let i = match self.index.get(&seq) {
            Some(&i) => i,
            None if seq.is_empty() => 0,
            None if self.bytes + seq.len() > MAX_STYLE_BYTES => 0,
            None => {
                self.bytes += seq.len();
                work.style_bytes = self.bytes;
                self.list.push(seq.clone());
                self.index.insert(seq, self.list.len() - 1);
                self.list.len() - 1
            }
        };
        style.interned = Some(i);
        i
    }
}

/// What a terminal shows for a line holding carriage returns: each CR moves the
/// cursor back to column 0 and what follows overwrites what was there, colours
/// (SGR) included, so `50%\r100%` shows `100%`, and `x\revent: complete` shows
/// the harmless text `event: complete`. Erase-in-line (`ESC[K`), cursor moves
/// along the line (`ESC[nC`, `ESC[nD`, `ESC[nG`) and backspace are applied too;
/// other escape sequences are dropped. Lines without a CR are returned as they
/// are. The result never holds CR or LF.
pub fn terminal_text(s: &str) -> Cow<'_, str> {
    if !s.contains(['\r', '\n']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(render(s, &mut Work::default()))
}

/// The body of [`terminal_text`], counting its work.
pub fn render(s: &str, work: &mut Work) -> String {
    let mut styles = Styles::new();
    let mut style = Style::default();
    let mut cells: Vec<Cell> = Vec::new();
    let mut erases = Erases::default();
    let mut writes: u32 = 0;
    let mut col = 0usize;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        work.steps += 1;
        match c {
            '\r' | '\n' => col = 0,
            '\u{8}' => col = col.saturating_sub(1),
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut fin = None;
                    let mut too_long = false;
                    for p in chars.by_ref() {
                        work.steps += 1;
                        if ('\u{40}'..='\u{7e}').contains(&p) {
                            fin = Some(p);
                            break;
                        }
                        if params.len() < MAX_CSI_PARAMS {
                            params.push(p);
                        } else {
                            too_long = true;
                        }
                    }
                    if too_long {
                        continue;
                    }
                    let n = |d: usize| params.parse::<usize>().unwrap_or(d).clamp(1, MAX_COLS);
                    match fin {
                        Some('m') => style.apply(&params, work),
                        Some('K') => match params.as_str() {
                            "" | "0" => erases.from.push((writes, col)),
                            "1" => erases.before.push((writes, col.saturating_add(1))),
                            _ => erases.before.push((writes, usize::MAX)),
                        },
                        Some('C') => col = (col + n(1)).min(MAX_COLS),
                        Some('D') => col = col.saturating_sub(n(1)),
                        Some('G') => col = n(1) - 1,
                        _ => {}
                    }
                }
                Some(']') => {
                    // OSC (titles, hyperlinks): up to BEL or ESC \.
                    chars.next();
                    while let Some(p) = chars.next() {
                        work.steps += 1;
                        if p == '\u{7}' || (p == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            _ if col >= MAX_COLS => {} // past the edge: nothing is shown
            _ => {
                writes += 1;
                let cell = Cell {
                    ch: c,
                    style: styles.intern(&mut style, work),
                    at: writes,
                };
                if col < cells.len() {
                    cells[col] = cell;
                } else {
                    // Cells are only ever added, never removed, so padding
                    // costs at most MAX_COLS steps over the whole line.
                    work.steps += col - cells.len();
                    cells.resize(
                        col,
                        Cell {
                            ch: ' ',
                            style: 0,
                            at: 0,
                        },
                    );
                    cells.push(cell);
                }
                col += 1;
            }
        }
    }
    let erased = erased_cells(&cells, &erases, work);
    let shown_len = erased.iter().rposition(|e| !e).map_or(0, |i| i + 1);
    // The colour in force after the line carries on to the next one, as on a
    // terminal.
    let last = styles.intern(&mut style, work);
    let mut out = String::with_capacity(s.len().min(4 * MAX_COLS));
    let mut style_out = 0usize;
    let mut shown = 0usize;
    let mut switch = |out: &mut String, to: usize, work: &mut Work| {
        if to == shown {
            return;
        }
        let seq = &styles.list[to];
        // Past the output budget a style is still ended, never started.
        if to != 0 && style_out + seq.len() > MAX_STYLE_OUTPUT {
            if shown != 0 {
                out.push_str("\u{1b}[0m");
                shown = 0;
            }
            return;
        }
        if shown != 0 {
            out.push_str("\u{1b}[0m");
        }
        out.push_str(seq);
        style_out += seq.len() + 4;
        work.steps += seq.len() + 4;
        shown = to;
    };
    for (c, &gone) in cells[..shown_len].iter().zip(&erased) {
        work.steps += 1;
        let blank = gone || c.at == 0;
        switch(&mut out, if blank { 0 } else { c.style }, work);
        out.push(if blank { ' ' } else { c.ch });
    }
    switch(&mut out, last, work);
    out
}

/// Which cells an erase came after: cell `i`, written at write `t`, is erased
/// if an `ESC[1K`/`ESC[2K` at or after `t` reached past `i`, or an `ESC[K` at or
/// after `t` started at or before `i`. Suffix maxima and minima over the
/// operations make that one binary search per cell.
fn erased_cells(cells: &[Cell], erases: &Erases, work: &mut Work) -> Vec<bool> {
    let mut before_max = vec![0usize; erases.before.len() + 1];
    for (i, &(_, bound)) in erases.before.iter().enumerate().rev() {
        before_max[i] = before_max[i + 1].max(bound);
    }
    let mut from_min = vec![usize::MAX; erases.from.len() + 1];
    for (i, &(_, start)) in erases.from.iter().enumerate().rev() {
        from_min[i] = from_min[i + 1].min(start);
    }
    work.steps += erases.before.len() + erases.from.len();
    cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            work.steps += 1;
            let b = erases.before.partition_point(|&(t, _)| t < c.at);
            let f = erases.from.partition_point(|&(t, _)| t < c.at);
            before_max[b] > i || from_min[f] <= i
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminal_view_overwrites_like_a_terminal() {
        assert_eq!(terminal_text("50%\r100%"), "100%");
        assert_eq!(terminal_text("abcdef\rxy"), "xycdef");
        assert_eq!(terminal_text("abcdef\rxy\x1b[K"), "xy");
        assert_eq!(terminal_text("abc\x08\x08X\r"), "aXc");
        assert_eq!(terminal_text("plain"), "plain");
        assert_eq!(terminal_text("a\x1b]0;title\x07b\rc"), "cb");
    }

    #[test]
    fn erases_apply_to_what_was_written_before_them() {
        // Erase to the start, then write after it: only the later text stays.
        assert_eq!(terminal_text("abcdef\x1b[3G\x1b[1Kxy\r"), "  xyef");
        assert_eq!(terminal_text("abcdef\x1b[2K\rxy"), "xy");
        // Erased cells in the middle show as blanks; trailing ones vanish.
        assert_eq!(terminal_text("abcdef\r\x1b[2C\x1b[K\rZ"), "Zb");
        assert_eq!(terminal_text("abc\r\x1b[1Kx\r"), "xbc");
    }

    #[test]
    fn the_terminal_view_keeps_colours_per_cell() {
        // "red" in red, reset, then "ab" over it in the default colour.
        assert_eq!(
            terminal_text("\x1b[31mred\x1b[0m\rab"),
            "ab\x1b[31md\x1b[0m"
        );
        // The colour in force at the end carries on.
        assert_eq!(terminal_text("x\r\x1b[1;32mok"), "\x1b[1;32mok");
        assert_eq!(terminal_text("\x1b[31mab\rc"), "\x1b[31mcb");
    }

    #[test]
    fn repeated_sgr_sequences_are_coalesced() {
        // Bold applied 1,000 times is bold once; re-applying red after green
        // moves it last, which is what the terminal ends up showing.
        let many = format!("x\r{}b", "\x1b[1m".repeat(1000));
        assert_eq!(terminal_text(&many), "\x1b[1mb");
        assert_eq!(
            terminal_text("x\r\x1b[31m\x1b[32m\x1b[31mc"),
            "\x1b[32m\x1b[31mc"
        );
    }

    /// Renders `line` and checks the work and memory are linear in it.
    fn assert_linear(what: &str, line: &str) -> String {
        let mut work = Work::default();
        let out = render(line, &mut work);
        assert!(
            work.steps <= 40 * line.len(),
            "{what}: {} steps for {} bytes",
            work.steps,
            line.len()
        );
        assert!(work.style_bytes <= MAX_STYLE_BYTES, "{what}: {work:?}");
        assert!(
            out.len() <= 4 * MAX_COLS + MAX_STYLE_OUTPUT + 64,
            "{what}: {} bytes out",
            out.len()
        );
        out
    }

    #[test]
    fn hostile_lines_cost_work_and_memory_linear_in_their_length() {
        // The line of the issue: a CR and 16,000 bold sequences (64 KB).
        let bold = format!("\r{}", "\x1b[1m".repeat(16_000));
        assert_eq!(assert_linear("bold", &bold), "\x1b[1m");
        let mut work = Work::default();
        render(&bold, &mut work);
        assert!(work.style_bytes < 64, "{work:?}");
        // Every cell in a new style.
        let styles: String = (0..6_000)
            .map(|i| format!("\x1b[38;5;{}mx", i % 256))
            .collect();
        assert_linear("styles", &format!("\r{styles}"));
        // Distinct long parameter strings that never repeat.
        let long: String = (0..1_000)
            .map(|i| format!("\x1b[{};{}mx", i, "1;".repeat(25)))
            .collect();
        assert_linear("long sgr", &format!("\r{long}"));
        // Far cursor moves, repeated erases of a wide line.
        assert_linear("moves", &"\x1b[99999999Cx\r\x1b[2K".repeat(4_000));
        let wide = format!("{}\r{}", "y".repeat(30_000), "\x1b[1K".repeat(8_000));
        assert_linear("erase before", &wide);
        let again = "\x1b[60000Gz\x1b[1G\x1b[K".repeat(3_000);
        assert_linear("erase after", &again);
        // An endless parameter string is dropped, not kept.
        let endless = format!("\r\x1b[{}mq", "1".repeat(60_000));
        assert_eq!(assert_linear("endless", &endless), "q");
    }
}
