//! A call's transcript: lines appended one at a time, each bounded, read a page at a time.
//!
//! Why it is apart from the rest of the record: on a long call the transcript is most of it. If every
//! new line copied or re-serialized the whole record, a call's cost would grow with the square of its
//! length (250 lines of 8 KiB once took 1.2 s of CPU and ~100 MiB). Here a line is appended in O(line)
//! and stored as a row of its own; readers take a bounded page (the latest lines, or from an index), so
//! `get-call`, the `call://` resource and `wait-for-call` stay far below what any client accepts (the
//! official Python client refuses an SSE event over 1 MiB). A voice model can emit anything, so one
//! line's text is bounded too.

use super::{Speaker, TranscriptLine};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The most text kept for one line, in bytes (UTF-8); longer text is cut at a character boundary
/// and ends with "…". About 40 s of fast speech: no real turn is longer.
pub const MAX_LINE_BYTES: usize = 4096;
/// Lines kept per call; later ones still go out as events, and the record counts them as omitted.
/// Far more turns than the longest call has (an hour of quick back-and-forth is ~1,000).
pub const MAX_LINES: usize = 5_000;
/// Lines in a page when the reader does not say.
pub const DEFAULT_PAGE_LINES: usize = 100;
/// The most lines one page may ask for.
pub const MAX_PAGE_LINES: usize = 500;
/// Text in one page, in bytes, whatever the line count: a page fits well within 1 MiB even JSON-escaped
/// twice (MCP tool results carry the structured result and a text copy of it).
pub const MAX_PAGE_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    lines: Vec<TranscriptLine>,
    /// Lines not kept because the transcript was full.
    omitted: u64,
}

/// Which part of a transcript to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageRequest {
    /// The first line's index (from 0); `None`: the latest lines.
    pub from: Option<usize>,
    /// At most this many lines (clamped to 1..=[`MAX_PAGE_LINES`]); `None`: [`DEFAULT_PAGE_LINES`].
    pub limit: Option<usize>,
}

/// Part of a transcript, and where it sits in the whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptPage {
    /// The lines, oldest first.
    pub transcript: Vec<TranscriptLine>,
    /// Lines in the whole transcript.
    pub transcript_total: usize,
    /// The index (from 0) of the first line above; the next page starts at this plus their number.
    pub transcript_from: usize,
    /// Lines said after the transcript reached its cap, not kept (they were still sent as events).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub transcript_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Transcript {
    /// A transcript restored from storage (lines beyond the cap are counted, not kept).
    pub fn from_lines(lines: Vec<TranscriptLine>) -> Self {
        let mut t = Self::default();
        for line in lines {
            t.push(line);
        }
        t
    }

    /// Appends a line; its index, or `None` when the transcript is full (the line is counted).
    pub fn push(&mut self, line: TranscriptLine) -> Option<usize> {
        if self.lines.len() >= MAX_LINES {
            self.omitted += 1;
            return None;
        }
        self.lines.push(line);
        Some(self.lines.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn lines(&self) -> &[TranscriptLine] {
        &self.lines
    }

    /// Lines from index `from` on, at most `max_lines` of them.
    pub fn since(&self, from: usize, max_lines: usize) -> &[TranscriptLine] {
        let start = from.min(self.lines.len());
        let end = start.saturating_add(max_lines).min(self.lines.len());
        &self.lines[start..end]
    }

    /// The longest run of latest lines whose text fits in `max_bytes`: what a resumed voice session is
    /// told of the conversation so far.
    pub fn latest_within(&self, max_bytes: usize) -> &[TranscriptLine] {
        let mut bytes = 0usize;
        let mut start = self.lines.len();
        for line in self.lines.iter().rev() {
            bytes += line.text.len();
            if bytes > max_bytes {
                break;
            }
            start -= 1;
        }
        &self.lines[start..]
    }

    /// A bounded page: by line count and by bytes of text (a page always has at least one line when
    /// the range has any, however long it is: lines are bounded themselves).
    pub fn page(&self, request: PageRequest) -> TranscriptPage {
        let total = self.lines.len();
        let limit = request.limit.unwrap_or(DEFAULT_PAGE_LINES).clamp(1, MAX_PAGE_LINES);
        let (from, to) = match request.from {
            Some(from) => {
                let from = from.min(total);
                let mut to = from;
                let mut bytes = 0;
                while to < total && to - from < limit {
                    bytes += self.lines[to].text.len();
                    if bytes > MAX_PAGE_BYTES && to > from {
                        break;
                    }
                    to += 1;
                }
                (from, to)
            }
            None => {
                let mut from = total;
                let mut bytes = 0;
                while from > 0 && total - from < limit {
                    bytes += self.lines[from - 1].text.len();
                    if bytes > MAX_PAGE_BYTES && from < total {
                        break;
                    }
                    from -= 1;
                }
                (from, total)
            }
        };
        TranscriptPage {
            transcript: self.lines[from..to].to_vec(),
            transcript_total: total,
            transcript_from: from,
            transcript_omitted: self.omitted,
        }
    }
}

impl TranscriptLine {
    /// A line as it is kept: trimmed, control characters (a model's stray newlines, NULs) made spaces,
    /// cut to [`MAX_LINE_BYTES`]. `None` when nothing is left to say.
    pub fn bounded(speaker: Speaker, text: &str, timestamp: OffsetDateTime) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        const ELLIPSIS: char = '…';
        let mut kept = String::with_capacity(text.len().min(MAX_LINE_BYTES));
        for c in text.chars() {
            let c = if c.is_control() { ' ' } else { c };
            if kept.len() + c.len_utf8() > MAX_LINE_BYTES - ELLIPSIS.len_utf8() {
                kept.push(ELLIPSIS);
                break;
            }
            kept.push(c);
        }
        Some(Self { speaker, text: kept, timestamp })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line(n: usize, bytes: usize) -> TranscriptLine {
        let text = format!("{n:06}{}", "x".repeat(bytes.saturating_sub(6)));
        TranscriptLine { speaker: Speaker::Human, text, timestamp: OffsetDateTime::UNIX_EPOCH }
    }

    fn transcript(n: usize, bytes: usize) -> Transcript {
        Transcript::from_lines((0..n).map(|i| line(i, bytes)).collect())
    }

    #[test]
    fn a_line_is_cut_at_a_character_boundary_and_scrubbed_of_control_characters() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let long = "é".repeat(10_000);
        let l = TranscriptLine::bounded(Speaker::Ai, &long, at).unwrap();
        assert!(l.text.len() <= MAX_LINE_BYTES, "{}", l.text.len());
        assert!(l.text.ends_with('…'));
        assert!(l.text.len() > MAX_LINE_BYTES - 8, "cut close to the bound, not far below it");
        let l = TranscriptLine::bounded(Speaker::Ai, " a\nb\u{0}c\t ", at).unwrap();
        assert_eq!(l.text, "a b c");
        assert_eq!(TranscriptLine::bounded(Speaker::Ai, " \n ", at), None);
        let short = TranscriptLine::bounded(Speaker::Human, "Yes, from ten to four.", at).unwrap();
        assert_eq!(short.text, "Yes, from ten to four.");
    }

    #[test]
    fn the_default_page_is_the_latest_lines_with_the_count() {
        let t = transcript(250, 20);
        let page = t.page(PageRequest::default());
        assert_eq!(page.transcript_total, 250);
        assert_eq!(page.transcript_from, 150);
        assert_eq!(page.transcript.len(), DEFAULT_PAGE_LINES);
        assert!(page.transcript[0].text.starts_with("000150"));
        assert!(page.transcript[99].text.starts_with("000249"));
    }

    #[test]
    fn pages_from_an_index_walk_the_whole_transcript_once() {
        let t = transcript(1_234, 50);
        let mut from = 0;
        let mut seen = Vec::new();
        loop {
            let page = t.page(PageRequest { from: Some(from), limit: Some(500) });
            assert_eq!(page.transcript_from, from);
            if page.transcript.is_empty() {
                break;
            }
            from += page.transcript.len();
            seen.extend(page.transcript);
        }
        assert_eq!(seen, t.lines());
        // Past the end: an empty page that still says how long the transcript is.
        let past = t.page(PageRequest { from: Some(9_999), limit: None });
        assert_eq!((past.transcript.len(), past.transcript_from, past.transcript_total), (0, 1_234, 1_234));
    }

    #[test]
    fn a_page_is_bounded_in_bytes_whatever_the_line_count() {
        let t = transcript(500, MAX_LINE_BYTES);
        for request in [PageRequest { from: None, limit: Some(500) }, PageRequest { from: Some(0), limit: Some(500) }] {
            let page = t.page(request);
            let bytes: usize = page.transcript.iter().map(|l| l.text.len()).sum();
            assert!(bytes <= MAX_PAGE_BYTES, "{bytes}");
            assert_eq!(page.transcript.len(), MAX_PAGE_BYTES / MAX_LINE_BYTES);
            assert_eq!(page.transcript_total, 500);
        }
        // Asking for zero lines still gets one: a page always makes progress.
        assert_eq!(t.page(PageRequest { from: Some(3), limit: Some(0) }).transcript.len(), 1);
    }

    #[test]
    fn a_full_transcript_counts_what_it_did_not_keep() {
        let mut t = transcript(MAX_LINES, 8);
        assert_eq!(t.push(line(0, 8)), None);
        assert_eq!(t.push(line(1, 8)), None);
        assert_eq!(t.len(), MAX_LINES);
        assert_eq!(t.page(PageRequest::default()).transcript_omitted, 2);
    }

    #[test]
    fn a_resumed_session_is_told_the_latest_lines_that_fit() {
        let t = transcript(10, 100);
        let tail = t.latest_within(350);
        assert_eq!(tail.len(), 3);
        assert!(tail[0].text.starts_with("000007"));
        assert!(t.latest_within(0).is_empty());
        assert_eq!(t.latest_within(usize::MAX).len(), 10);
    }
}
