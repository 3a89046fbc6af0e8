//! Full-text search in domain terms: the query language clients write
//! (words, "phrases", `-excluded`), and the text of a record that is indexed,
//! in five columns from most to least telling.

use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use super::error::{Error, Result};
use super::kind::Kind;

pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;
/// Longer queries are refused rather than silently cut.
pub const MAX_QUERY_CHARS: usize = 1000;
pub const MAX_TERMS: usize = 32;

/// A word, or several words that must appear together in order.
pub type Term = Vec<String>;

/// A parsed query: every included term must match, no excluded one may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub include: Vec<Term>,
    pub exclude: Vec<Term>,
}

/// Words as the index splits them: runs of letters and digits, lower case.
fn words(text: &str) -> Term {
    word_spans(text)
        .map(|(start, end)| text[start..end].to_lowercase())
        .collect()
}

/// Parses a query; a blank one browses. Whitespace separates terms; `"..."` is a phrase (an
/// unclosed quote runs to the end); a leading `-` excludes a term; a word
/// written with inner punctuation (`e-safety`) is the phrase of its parts.
/// Each term is kept once.
pub fn parse(query: &str) -> Result<Query> {
    let chars = query.chars().count();
    if chars > MAX_QUERY_CHARS {
        return Err(Error::invalid(
            "query",
            format!("is {chars} characters long; the limit is {MAX_QUERY_CHARS}"),
        ));
    }
    let mut parsed = Query {
        include: Vec::new(),
        exclude: Vec::new(),
    };
    // Terms as written, repeats included, for the limit.
    let mut written = 0;
    let mut rest = query.trim_start();
    while !rest.is_empty() {
        let excluded = rest.starts_with('-');
        if excluded {
            rest = &rest[1..];
        }
        let (term, tail) = if let Some(quoted) = rest.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let term = words(term);
        if !term.is_empty() {
            written += 1;
            let terms = if excluded {
                &mut parsed.exclude
            } else {
                &mut parsed.include
            };
            // A repeated term adds nothing to what matches.
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
        rest = tail.trim_start();
    }
    // A blank query browses everything; text without words, or excluded
    // words alone, are refused rather than read as "everything".
    if parsed.include.is_empty() && !query.trim().is_empty() {
        return Err(Error::invalid(
            "query",
            if parsed.exclude.is_empty() {
                "has no words to search for"
            } else {
                "excludes words but has none to search for"
            },
        ));
    }
    if written > MAX_TERMS {
        return Err(Error::invalid(
            "query",
            format!("has {written} words and phrases; the limit is {MAX_TERMS}"),
        ));
    }
    Ok(parsed)
}

/// The indexed text of a record, by column, most telling first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchText {
    /// The title field.
    pub title: String,
    /// Short descriptions (`summary`, a workshop's theme question).
    pub summary: String,
    /// Capabilities, topics, themes.
    pub terms: String,
    /// People and organisations (organisers, panellists, a tool's developer).
    pub people: String,
    /// Long text: descriptions, bodies, outcomes.
    pub body: String,
}

impl SearchText {
    pub fn columns(&self) -> [&str; 5] {
        [
            &self.title,
            &self.summary,
            &self.terms,
            &self.people,
            &self.body,
        ]
    }

    /// The searched text of a record, from the field paths its kind names.
    pub fn of(kind: Kind, msg: &DynamicMessage) -> SearchText {
        let [title, summary, terms, people, body] = kind.search_fields().map(|paths| {
            let mut parts = Vec::new();
            for path in paths {
                collect(msg, path, &mut parts);
            }
            parts.join("\n")
        });
        SearchText {
            title,
            summary,
            terms,
            people,
            body,
        }
    }
}

/// Appends every non-empty string at `path` (dotted, through repeated and
/// nested messages).
fn collect(msg: &DynamicMessage, path: &str, out: &mut Vec<String>) {
    let (head, tail) = match path.split_once('.') {
        Some((head, tail)) => (head, Some(tail)),
        None => (path, None),
    };
    let Some(field) = msg.descriptor().get_field_by_name(head) else {
        return;
    };
    let value = msg.get_field(&field);
    let items: &[Value] = match value.as_ref() {
        Value::List(items) => items,
        one => std::slice::from_ref(one),
    };
    for item in items {
        match (item, tail) {
            (Value::String(text), None) if !text.trim().is_empty() => out.push(text.clone()),
            (Value::Message(inner), Some(tail)) => collect(inner, tail, out),
            _ => {}
        }
    }
}

/// Words in a snippet, about.
pub const SNIPPET_WORDS: usize = 24;
/// Words of context before the first match in a snippet.
const SNIPPET_LEAD: usize = 4;

/// The English stem of a lower-case word (`protection` and `protecting`
/// both `protect`), for text whose language is not known.
pub fn english_stem(word: &str) -> String {
    static STEMMER: std::sync::LazyLock<rust_stemmers::Stemmer> = std::sync::LazyLock::new(|| {
        rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English)
    });
    STEMMER.stem(&word.to_lowercase()).into_owned()
}

/// A passage of about `SNIPPET_WORDS` words of the record's searched text
/// with the most of the query's words, those words in Markdown bold, on one
/// line; `…` where the passage cuts the text. Made here from the record
/// rather than by the database, whose snippet functions ran the full-text
/// match a second time.
///
/// `key` is how the index matches a word in the record's language (its
/// stem, accents folded); stems keep a word's first letter, folded.
pub fn snippet(text: &SearchText, query: &Query, key: &mut dyn FnMut(&str) -> String) -> String {
    let mut wanted: Vec<String> = query.include.iter().flatten().map(|w| key(w)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    // The best passage: (distinct query words, matches, words), the
    // column, its words (byte range, the query word matched) and the range.
    type Words = Vec<(usize, usize, Option<usize>)>;
    type Score = (usize, usize, usize, std::cmp::Reverse<usize>);
    let mut best: Option<(Score, &str, Words, usize)> = None;
    // Stemming keeps a word's first letter, so only words that begin as a
    // query word does are stemmed: most of a record's words are not, and
    // stemming them was a tenth of a search's time.
    let initials: Vec<char> = wanted.iter().filter_map(|k| k.chars().next()).collect();
    let may_match = |word: &str, key: &mut dyn FnMut(&str) -> String| {
        let Some(first) = word.chars().next() else {
            return false;
        };
        if first.is_ascii() {
            return initials.contains(&first.to_ascii_lowercase());
        }
        // A letter with an accent is folded as the index folds it.
        key(first.encode_utf8(&mut [0; 4]))
            .chars()
            .next()
            .is_some_and(|c| initials.contains(&c))
    };
    for column in text.columns() {
        let words: Words = word_spans(column)
            .map(|(start, end)| {
                let word = &column[start..end];
                let key = may_match(word, key)
                    .then(|| key(word))
                    .and_then(|key| wanted.iter().position(|w| *w == key));
                (start, end, key)
            })
            .collect();
        let width = SNIPPET_WORDS.min(words.len());
        if width == 0 {
            continue;
        }
        // The window slides one word at a time, counting the matches of
        // each query word in it.
        let mut counts = vec![0usize; wanted.len()];
        let (mut distinct, mut matches) = (0usize, 0usize);
        let positions: Vec<usize> = (0..words.len()).filter(|i| words[*i].2.is_some()).collect();
        let mut next_match = 0;
        let mut column_best: Option<(Score, usize)> = None;
        for first in 0..=words.len() - width {
            if let Some(k) = first.checked_sub(1).and_then(|leaving| words[leaving].2) {
                counts[k] -= 1;
                matches -= 1;
                if counts[k] == 0 {
                    distinct -= 1;
                }
            }
            let entering = if first == 0 { 0 } else { first + width - 1 };
            for k in words[entering..first + width].iter().filter_map(|w| w.2) {
                if counts[k] == 0 {
                    distinct += 1;
                }
                counts[k] += 1;
                matches += 1;
            }
            while positions.get(next_match).is_some_and(|p| *p < first) {
                next_match += 1;
            }
            // Of equal passages, the one whose first match comes after a
            // few words of context.
            let lead = positions
                .get(next_match)
                .filter(|p| **p < first + width)
                .map_or(0, |p| p - first);
            let score = (
                distinct,
                matches,
                width,
                std::cmp::Reverse(lead.abs_diff(SNIPPET_LEAD)),
            );
            if column_best.is_none_or(|(b, _)| score > b) {
                column_best = Some((score, first));
            }
        }
        if let Some((score, first)) = column_best
            && best.as_ref().is_none_or(|(b, ..)| score > *b)
        {
            best = Some((score, column, words, first));
        }
    }
    let Some(((_, _, width, _), column, words, first)) = best else {
        return String::new();
    };
    let last = first + width;
    let mut out = String::new();
    if first > 0 {
        out.push('…');
    }
    // Matches with only spaces between them are one bold run, so a phrase
    // reads `**report button**`.
    let passage = &words[first..last];
    let mut at = passage[0].0;
    let mut bold = false;
    for (i, (start, end, matched)) in passage.iter().enumerate() {
        push_escaped(&mut out, &column[at..*start]);
        if matched.is_some() && !bold {
            out.push_str("**");
            bold = true;
        }
        out.push_str(&column[*start..*end]);
        let joins_next = passage.get(i + 1).is_some_and(|(next, _, next_matched)| {
            next_matched.is_some() && column[*end..*next].chars().all(char::is_whitespace)
        });
        if bold && !joins_next {
            out.push_str("**");
            bold = false;
        }
        at = *end;
    }
    if last < words.len() {
        out.push('…');
    }
    one_line(&out)
}

/// Characters Markdown reads as markup (emphasis, code, links, HTML,
/// strikethrough), escaped in the record's text so that `**` in a snippet
/// marks only matches. Words are letters and digits, so only the text
/// between them needs it.
const MARKDOWN: &[char] = &['\\', '`', '*', '_', '[', ']', '<', '>', '~'];

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        if MARKDOWN.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A snippet for a terminal: escapes undone, and each bold run between
/// `open` and `close` (an ANSI style, or nothing).
pub fn render(snippet: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(snippet.len());
    let mut chars = snippet.chars().peekable();
    let mut bold = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push_str(if bold { close } else { open });
                bold = !bold;
            }
            c => out.push(c),
        }
    }
    out
}

/// Byte ranges of the words of `text`: runs of letters and digits.
fn word_spans(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut chars = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while chars.next_if(|(_, c)| !c.is_alphanumeric()).is_some() {}
        let (start, _) = chars.next()?;
        let mut end = text.len();
        while let Some(&(i, c)) = chars.peek() {
            if !c.is_alphanumeric() {
                end = i;
                break;
            }
            chars.next();
        }
        Some((start, end))
    })
}

/// Makes a snippet one line: the text keeps line breaks, a result list
/// shows one paragraph.
pub fn one_line(snippet: &str) -> String {
    snippet.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::to_dynamic;
    use crate::pb;

    fn term(words: &[&str]) -> Term {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn snippets_bold_stemmed_matches_in_the_best_passage() {
        let filler = "lorem ipsum dolor sit amet ".repeat(20);
        let text = SearchText {
            title: "Safer platforms".into(),
            summary: "A short summary.".into(),
            body: format!(
                "{filler}Hotline staff protecting children online; {filler}one child only."
            ),
            ..Default::default()
        };
        let q = parse("protection children").unwrap();
        let got = snippet(&text, &q, &mut english_stem);
        assert!(got.starts_with('…') && got.ends_with('…'), "{got}");
        assert!(
            got.contains("Hotline staff **protecting children** online;"),
            "{got}"
        );
        assert_eq!(got.split_whitespace().count(), SNIPPET_WORDS, "{got}");

        // A short column is shown whole, its line breaks joined.
        let text = SearchText {
            title: "PhotoDNA\nfor video".into(),
            ..Default::default()
        };
        assert_eq!(
            snippet(&text, &parse("photodna").unwrap(), &mut english_stem),
            "**PhotoDNA** for video"
        );
        assert_eq!(snippet(&SearchText::default(), &q, &mut english_stem), "");
    }

    #[test]
    fn stemming_keeps_the_first_letter_which_snippets_rely_on() {
        // The stemmer's exceptions and its y-handling included.
        let words = "dying lying skies skis ugly early only idly yelling youth news \
                     generously über ëlite 2026s a is";
        for word in words.split_whitespace() {
            let key = english_stem(word);
            assert_eq!(key.chars().next(), word.chars().next(), "{word} -> {key}");
        }
        let text = SearchText {
            summary: "Dying skies, yelling youths".into(),
            ..Default::default()
        };
        assert_eq!(
            snippet(
                &text,
                &parse("die sky yell youth").unwrap(),
                &mut english_stem
            ),
            "**Dying skies**, **yelling youths**"
        );
    }

    #[test]
    fn the_records_own_markdown_is_escaped_so_bold_marks_only_matches() {
        let text = SearchText {
            summary:
                "Uses **bold**, *stars*, x_y, `code`, <b>tags</b> and a \\ near the report button"
                    .into(),
            ..Default::default()
        };
        let got = snippet(&text, &parse("report button").unwrap(), &mut english_stem);
        assert_eq!(
            got,
            "Uses \\*\\*bold\\*\\*, \\*stars\\*, x\\_y, \\`code\\`, \\<b\\>tags\\</b\\> and a \\\\ near the **report button**"
        );
        assert_eq!(
            render(&got, "[", "]"),
            "Uses **bold**, *stars*, x_y, `code`, <b>tags</b> and a \\ near the [report button]"
        );
    }

    #[test]
    fn snippets_without_a_match_open_the_text() {
        let text = SearchText {
            summary: "Nothing here matches the query at all".into(),
            ..Default::default()
        };
        assert_eq!(
            snippet(&text, &parse("zebra").unwrap(), &mut english_stem),
            "Nothing here matches the query at all"
        );
    }

    #[test]
    fn parses_words_phrases_and_exclusions() {
        let q = parse(r#"  Hash "Photo DNA" -video -"dark web" e-safety"#).unwrap();
        assert_eq!(
            q.include,
            vec![
                term(&["hash"]),
                term(&["photo", "dna"]),
                term(&["e", "safety"])
            ]
        );
        assert_eq!(q.exclude, vec![term(&["video"]), term(&["dark", "web"])]);
    }

    #[test]
    fn a_blank_query_browses_and_wordless_text_is_refused() {
        for blank in ["", "  \t "] {
            let q = parse(blank).unwrap();
            assert!(q.include.is_empty() && q.exclude.is_empty());
        }
        assert!(parse("!!! ...").is_err());
        assert!(parse("-video").is_err());
    }

    #[test]
    fn syntax_of_search_engines_is_read_as_words() {
        let q = parse(r#"a* OR NEAR(b c) "d" col:e ^f"#).unwrap();
        assert_eq!(
            q.include,
            vec![
                term(&["a"]),
                term(&["or"]),
                term(&["near", "b"]),
                term(&["c"]),
                term(&["d"]),
                term(&["col", "e"]),
                term(&["f"])
            ]
        );
    }

    #[test]
    fn an_unclosed_quote_runs_to_the_end() {
        let q = parse(r#"grooming "online safety"#).unwrap();
        assert_eq!(
            q.include,
            vec![term(&["grooming"]), term(&["online", "safety"])]
        );
    }

    #[test]
    fn repeated_terms_are_kept_once_and_counted_as_written() {
        let q = parse(r#"victim Victim "hash match" -video -VIDEO "hash match""#).unwrap();
        assert_eq!(q.include, vec![term(&["victim"]), term(&["hash", "match"])]);
        assert_eq!(q.exclude, vec![term(&["video"])]);
        let long = "word ".repeat(MAX_TERMS + 1);
        let refusal = parse(&long).unwrap_err().to_string();
        assert!(
            refusal.contains(&format!("has {} words", MAX_TERMS + 1)),
            "{refusal}"
        );
    }

    #[test]
    fn refuses_queries_without_words_to_search_for() {
        for query in ["-video", "!!! ---", r#""""#] {
            let err = parse(query).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{query:?}");
        }
        let long = "word ".repeat(MAX_TERMS + 1);
        assert_eq!(
            parse(&long).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let huge = "a".repeat(MAX_QUERY_CHARS + 1);
        assert_eq!(
            parse(&huge).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn extracts_columns_by_kind() {
        let tool = pb::Tool {
            display_name: "PhotoDNA".into(),
            summary: "Hash matching".into(),
            description: "Finds known images.".into(),
            developer: "Microsoft".into(),
            capabilities: vec!["hashing".into(), "video".into()],
            expansion_notes: "More regions.".into(),
            ..Default::default()
        };
        let text = SearchText::of(Kind::Tool, &to_dynamic(&tool).unwrap());
        assert_eq!(text.title, "PhotoDNA");
        assert_eq!(text.summary, "Hash matching");
        assert_eq!(text.terms, "hashing\nvideo");
        assert_eq!(text.people, "Microsoft");
        assert_eq!(text.body, "Finds known images.\nMore regions.");

        let workshop = pb::Workshop {
            title: "Protecting children".into(),
            organisers: vec![pb::Person {
                display_name: "Anjan Bose".into(),
                affiliation: "ECPAT International".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = SearchText::of(Kind::Workshop, &to_dynamic(&workshop).unwrap());
        assert_eq!(text.people, "Anjan Bose\nECPAT International");
    }
}
