//! The languages the index analyses text in. Each has its own text fields
//! and analyser (words, lower case, accents folded to ASCII, the
//! language's stemmer), so a record is stemmed as its language stems; a query is
//! analysed in every language and matched in each one's fields.

use tantivy::Index;
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    TextAnalyzer,
};

use crate::domain::search::SearchText;

#[derive(Debug, Clone, Copy)]
pub struct Lang {
    /// The BCP 47 primary language subtag; `und` for text of a language
    /// without a stemmer here (words are folded, not stemmed).
    pub code: &'static str,
    pub stemmer: Option<Language>,
    /// Position in `LANGUAGES`.
    pub index: usize,
}

impl Lang {
    pub fn analyzer_name(&self) -> String {
        format!("copex_{}", self.code)
    }

    pub fn analyzer(&self) -> TextAnalyzer {
        // Folded before stemming, so a word stems alike with or without
        // its accents (stemming `sécurité` then folding gave `secur`, but
        // `securite` stems to `securit`).
        let builder = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(60))
            .filter(LowerCaser)
            .filter(AsciiFoldingFilter)
            .dynamic();
        match self.stemmer {
            Some(language) => builder.filter_dynamic(Stemmer::new(language)).build(),
            None => builder.build(),
        }
    }
}

macro_rules! languages {
    ($(($code:literal, $stemmer:expr)),* $(,)?) => {
        pub const LANGUAGES: &[Lang] = &languages!(@list 0usize; []; $(($code, $stemmer)),*);
    };
    (@list $i:expr; [$($done:expr),*]; ($code:literal, $stemmer:expr) $(, ($rc:literal, $rs:expr))*) => {
        languages!(@list $i + 1usize; [$($done,)* Lang { code: $code, stemmer: $stemmer, index: $i }]; $(($rc, $rs)),*)
    };
    (@list $i:expr; [$($done:expr),*];) => { [$($done),*] };
}

languages![
    ("en", Some(Language::English)),
    ("fr", Some(Language::French)),
    ("es", Some(Language::Spanish)),
    ("pt", Some(Language::Portuguese)),
    ("ar", Some(Language::Arabic)),
    ("de", Some(Language::German)),
    ("it", Some(Language::Italian)),
    ("nl", Some(Language::Dutch)),
    ("da", Some(Language::Danish)),
    ("fi", Some(Language::Finnish)),
    ("el", Some(Language::Greek)),
    ("hu", Some(Language::Hungarian)),
    ("no", Some(Language::Norwegian)),
    ("ro", Some(Language::Romanian)),
    ("ru", Some(Language::Russian)),
    ("sv", Some(Language::Swedish)),
    ("ta", Some(Language::Tamil)),
    ("tr", Some(Language::Turkish)),
    ("und", None),
];

pub const ENGLISH: Lang = LANGUAGES[0];
const UNDETERMINED: Lang = LANGUAGES[LANGUAGES.len() - 1];

/// Registers every language's analyser on `index`.
pub fn register(index: &Index) {
    for lang in LANGUAGES {
        index
            .tokenizers()
            .register(&lang.analyzer_name(), lang.analyzer());
    }
}

/// The language of a BCP 47 tag, by its primary subtag; `None` for an
/// empty tag.
pub fn of_tag(tag: &str) -> Option<Lang> {
    let primary = tag.split(['-', '_']).next()?.trim().to_ascii_lowercase();
    if primary.is_empty() {
        return None;
    }
    let primary = match primary.as_str() {
        // Norwegian Bokmål and Nynorsk share the stemmer.
        "nb" | "nn" => "no",
        other => other,
    };
    Some(
        LANGUAGES
            .iter()
            .find(|l| l.code == primary)
            .copied()
            .unwrap_or(UNDETERMINED),
    )
}

/// Characters of a record's text its language is detected from.
const DETECTION_SAMPLE_CHARS: usize = 400;

/// The language a record's text is analysed in: its `language_code` when
/// set, else the one detected in its text, else English.
pub fn of_record(language_code: &str, text: &SearchText) -> Lang {
    if let Some(lang) = of_tag(language_code) {
        return lang;
    }
    let sample: String = text
        .columns()
        .iter()
        .flat_map(|c| [*c, "\n"])
        .collect::<String>()
        .chars()
        // whatlang is reliable on a few hundred characters, and its cost
        // grows with the text: over the whole of a record it took half of
        // a reindex's CPU.
        .take(DETECTION_SAMPLE_CHARS)
        .collect();
    detect(&sample).unwrap_or(ENGLISH)
}

/// The languages detection chooses among, with their codes here.
const DETECTABLE: [(whatlang::Lang, &str); 18] = {
    use whatlang::Lang as W;
    [
        (W::Eng, "en"),
        (W::Fra, "fr"),
        (W::Spa, "es"),
        (W::Por, "pt"),
        (W::Ara, "ar"),
        (W::Deu, "de"),
        (W::Ita, "it"),
        (W::Nld, "nl"),
        (W::Dan, "da"),
        (W::Fin, "fi"),
        (W::Ell, "el"),
        (W::Hun, "hu"),
        (W::Nob, "no"),
        (W::Ron, "ro"),
        (W::Rus, "ru"),
        (W::Swe, "sv"),
        (W::Tam, "ta"),
        (W::Tur, "tr"),
    ]
};

/// The language whatlang finds reliably in `text`, among those with a
/// stemmer here.
fn detect(text: &str) -> Option<Lang> {
    // whatlang scores the text against every language of its script; kept
    // to those with a stemmer, detection costs less than half what it did. Text
    // of another language gets the nearest one's stemmer, or English when
    // no match is reliable: a query is analysed the same way, so it still
    // finds the record.
    static DETECTOR: std::sync::LazyLock<whatlang::Detector> = std::sync::LazyLock::new(|| {
        whatlang::Detector::with_allowlist(DETECTABLE.iter().map(|(w, _)| *w).collect())
    });
    let info = DETECTOR.detect(text).filter(|i| i.is_reliable())?;
    let (_, code) = DETECTABLE.iter().find(|(w, _)| *w == info.lang())?;
    of_tag(code)
}

/// The terms `word` analyses to in `lang`, in order.
pub fn analyse(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_languages_by_their_primary_subtag() {
        assert_eq!(of_tag("pt-BR").map(|l| l.code), Some("pt"));
        assert_eq!(of_tag("FR").map(|l| l.code), Some("fr"));
        assert_eq!(of_tag("nb").map(|l| l.code), Some("no"));
        assert_eq!(of_tag("zh-Hant").map(|l| l.code), Some("und"));
        assert_eq!(of_tag("").map(|l| l.code), None);
        for (i, lang) in LANGUAGES.iter().enumerate() {
            assert_eq!(lang.index, i);
        }
    }

    #[test]
    fn analysers_fold_accents_then_stem() {
        let fr = of_tag("fr").unwrap();
        let words = analyse(&mut fr.analyzer(), "Sécurité des Enfants");
        assert_eq!(words, analyse(&mut fr.analyzer(), "securite des enfant"));
        assert_eq!(words[2], "enfant");
        let es = of_tag("es").unwrap();
        assert_eq!(
            analyse(&mut es.analyzer(), "protección niños"),
            analyse(&mut es.analyzer(), "proteccion nino")
        );
    }

    #[test]
    fn detection_falls_back_to_english() {
        let text = |body: &str| SearchText {
            body: body.into(),
            ..Default::default()
        };
        assert_eq!(
            of_record(
                "",
                &text(
                    "La protection des enfants en ligne demande une coopération étroite \
                     entre les associations, les plateformes et les autorités publiques."
                )
            )
            .code,
            "fr"
        );
        assert_eq!(of_record("", &text("ok")).code, "en");
        assert_eq!(of_record("es", &text("anything")).code, "es");
    }
}
