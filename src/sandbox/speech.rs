//! Simulated speech: µ-law audio that carries its own words, so the two simulators can hold a scripted
//! conversation through the real server without any speech recognition.
//!
//! An utterance is a run of non-silent µ-law bytes: a 4-byte header (`0x00 0x01` and the text's length,
//! big-endian), the UTF-8 text, then filler, long enough to last `ms_per_char` per character, rounded up
//! to whole 20 ms frames. Silence is µ-law `0xFF`. The Realtime simulator decodes the callee's appended
//! audio with [`Listener`]; the Twilio simulator decodes what it "plays" the same way, so tests can say
//! what the callee actually heard (and how much of it, after a barge-in).

/// µ-law silence.
pub const SILENCE: u8 = 0xFF;
/// Bytes in one 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
const FILLER: u8 = 0x55;

/// The audio of `text`, as whole 20 ms frames.
pub fn speak(text: &str, ms_per_char: u32) -> Vec<u8> {
    let bytes = text.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    let mut audio = Vec::with_capacity(4 + bytes.len());
    audio.extend_from_slice(&[0x00, 0x01]);
    audio.extend_from_slice(&len.to_be_bytes());
    audio.extend_from_slice(&bytes[..usize::from(len)]);
    let spoken = text.chars().count() * ms_per_char as usize * 8;
    let total = audio.len().max(spoken).div_ceil(FRAME) * FRAME;
    audio.resize(total, FILLER);
    audio
}

/// `ms` of silence, as whole frames.
pub fn silence(ms: u32) -> Vec<u8> {
    vec![SILENCE; (ms as usize * 8).div_ceil(FRAME) * FRAME]
}

/// Whether a chunk of audio has any sound in it.
pub fn is_speech(chunk: &[u8]) -> bool {
    chunk.iter().any(|&b| b != SILENCE)
}

/// The text at the start of an utterance's audio, if enough of it has arrived.
pub fn words(audio: &[u8]) -> Option<String> {
    let start = audio.windows(2).position(|w| w == [0x00, 0x01])?;
    let header = audio.get(start..start + 4)?;
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let text = audio.get(start + 4..start + 4 + len)?;
    Some(String::from_utf8_lossy(text).into_owned())
}

/// Turns a stream of audio chunks into utterances, the way a voice-activity detector would: speech
/// starts at the first sound and ends after `end_silence_ms` of silence.
#[derive(Debug)]
pub struct Listener {
    end_silence_bytes: usize,
    /// Bytes of audio heard in total (8 per ms).
    heard: usize,
    current: Option<Utterance>,
    silent_run: usize,
}

#[derive(Debug, Clone)]
struct Utterance {
    audio: Vec<u8>,
}

/// What a chunk of audio changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Speech began at this offset into the stream (ms).
    Started { at_ms: u64 },
    /// Speech ended at this offset (ms); `text` is what was said, if it could be read.
    Ended { at_ms: u64, text: Option<String> },
}

impl Listener {
    pub fn new(end_silence_ms: u32) -> Self {
        Self { end_silence_bytes: end_silence_ms as usize * 8, heard: 0, current: None, silent_run: 0 }
    }

    /// Feeds one chunk; returns what started or ended in it (at most one of each, in order).
    pub fn hear(&mut self, chunk: &[u8]) -> Vec<Heard> {
        let mut out = Vec::new();
        for &b in chunk {
            let at = self.heard;
            self.heard += 1;
            if b != SILENCE {
                self.silent_run = 0;
                match &mut self.current {
                    Some(u) => u.audio.push(b),
                    None => {
                        out.push(Heard::Started { at_ms: (at / 8) as u64 });
                        self.current = Some(Utterance { audio: vec![b] });
                    }
                }
            } else if let Some(u) = &mut self.current {
                self.silent_run += 1;
                u.audio.push(b);
                if self.silent_run >= self.end_silence_bytes {
                    let end = at + 1 - self.silent_run;
                    let text = words(&u.audio);
                    self.current = None;
                    self.silent_run = 0;
                    out.push(Heard::Ended { at_ms: (end / 8) as u64, text });
                }
            }
        }
        out
    }

    /// Total audio heard so far, in ms.
    pub fn heard_ms(&self) -> u64 {
        (self.heard / 8) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_utterance_is_heard_with_its_words_and_timing() {
        let mut l = Listener::new(200);
        let mut events = Vec::new();
        let mut stream = silence(100);
        stream.extend(speak("Hello there", 50));
        stream.extend(silence(400));
        for frame in stream.chunks(FRAME) {
            events.extend(l.hear(frame));
        }
        assert_eq!(events[0], Heard::Started { at_ms: 100 });
        match &events[1] {
            Heard::Ended { at_ms, text } => {
                assert_eq!(text.as_deref(), Some("Hello there"));
                assert_eq!(*at_ms, 100 + 560); // 11 chars × 50 ms, rounded up to 20 ms frames
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn speech_is_whole_frames_and_never_silent() {
        let a = speak("x", 1);
        assert_eq!(a.len() % FRAME, 0);
        assert!(a.chunks(FRAME).all(is_speech));
        assert_eq!(words(&a[..10]).as_deref(), Some("x"));
        assert_eq!(words(&silence(20)), None);
    }
}
