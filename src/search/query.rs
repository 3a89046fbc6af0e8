//! A search over the index: the query a request becomes, ranked with BM25
//! statistics of the records every partner may see, counted and faceted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tantivy::collector::{Count, FacetCollector, TopDocs};
use tantivy::query::{
    Bm25StatisticsProvider, BooleanQuery, BoostQuery, ConstScoreQuery, Occur, PhraseQuery, Query,
    TermQuery, TermSetQuery,
};
use tantivy::schema::{Facet, Field, IndexRecordOption, Term, Value};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{DocAddress, DocSet, Searcher, TERMINATED, TantivyDocument};

use super::languages::{self, LANGUAGES};
use super::{BOOSTS, EVERYONE, SearchIndex, index_error};
use crate::domain::search::Term as Words;
use crate::domain::{Kind, Result};

pub struct Request<'a> {
    /// The calling partner's id.
    pub viewer: &'a str,
    /// Empty `include`: every record the viewer may see, newest update
    /// first.
    pub query: &'a crate::domain::search::Query,
    /// Empty for all kinds.
    pub kinds: &'a [Kind],
    /// Only these records (those a filter let through), when given.
    pub names: Option<&'a HashSet<String>>,
    pub offset: usize,
    pub limit: usize,
    /// Facets to count (`super::FACETS`).
    pub facets: &'a [String],
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Record names and scores, best first.
    pub hits: Vec<(String, f32)>,
    /// Every match the viewer may see.
    pub total: u64,
    /// Per facet asked for: values and counts, most frequent first.
    pub facets: Vec<(String, Vec<(String, u64)>)>,
}

/// A query clause that filters without adding to the score.
fn filter(query: Box<dyn Query>) -> Box<dyn Query> {
    Box::new(ConstScoreQuery::new(query, 0.0))
}

impl SearchIndex {
    /// Runs a search on the current searcher (blocking: call it off the
    /// async threads).
    pub fn search(&self, req: &Request<'_>) -> Result<Outcome> {
        let searcher = self.searcher();
        let fields = &self.fields;
        // Only the languages the index holds: a query is analysed in each.
        let mut present = Vec::new();
        for lang in LANGUAGES {
            let term = Term::from_field_text(fields.language, lang.code);
            if searcher.doc_freq(&term).map_err(index_error)? > 0 {
                present.push((*lang, lang.analyzer()));
            }
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for words in &req.query.include {
            clauses.push((Occur::Must, self.words_query(&mut present, words)));
        }
        for words in &req.query.exclude {
            clauses.push((Occur::MustNot, self.words_query(&mut present, words)));
        }
        let audience = [EVERYONE, req.viewer].map(|a| Term::from_field_text(fields.audience, a));
        clauses.push((Occur::Must, filter(Box::new(TermSetQuery::new(audience)))));
        if !req.kinds.is_empty() {
            let kinds = req
                .kinds
                .iter()
                .map(|k| Term::from_field_text(fields.kind, k.singular()));
            clauses.push((Occur::Must, filter(Box::new(TermSetQuery::new(kinds)))));
        }
        if let Some(names) = req.names {
            let names = names.iter().map(|n| Term::from_field_text(fields.name, n));
            clauses.push((Occur::Must, filter(Box::new(TermSetQuery::new(names)))));
        }
        let query = BooleanQuery::new(clauses);
        let limit = req.limit.max(1);
        // Facets are counted in the same pass as the ranking and the total.
        let facet_collector = (!req.facets.is_empty()).then(|| {
            let mut collector = FacetCollector::for_field("facets");
            for facet in req.facets {
                collector.add_facet(Facet::from_path([facet.as_str()]));
            }
            collector
        });
        let (ranked, total, counts): (Vec<(f32, DocAddress)>, usize, _) =
            if req.query.include.is_empty() {
                let collector = TopDocs::with_limit(limit)
                    .and_offset(req.offset)
                    .order_by_fast_field::<i64>("update_time", tantivy::Order::Desc);
                let (top, total, counts) = searcher
                    .search(&query, &(collector, Count, facet_collector))
                    .map_err(index_error)?;
                (
                    top.into_iter().map(|(_, addr)| (0.0, addr)).collect(),
                    total,
                    counts,
                )
            } else {
                let stats = PublicStats {
                    searcher: &searcher,
                    public: self.public_docs(&searcher)?,
                };
                let collector = TopDocs::with_limit(limit)
                    .and_offset(req.offset)
                    .order_by_score();
                searcher
                    .search_with_statistics_provider(
                        &query,
                        &(collector, Count, facet_collector),
                        &stats,
                    )
                    .map_err(index_error)?
            };
        let mut hits = Vec::with_capacity(ranked.len());
        if req.limit > 0 {
            for (score, addr) in ranked {
                let doc: TantivyDocument = searcher.doc(addr).map_err(index_error)?;
                if let Some(name) = doc.get_first(fields.name).and_then(|v| v.as_str()) {
                    hits.push((name.to_owned(), score));
                }
            }
        }
        let mut facets = Vec::with_capacity(req.facets.len());
        if let Some(counts) = counts {
            for facet in req.facets {
                let mut values: Vec<(String, u64)> = counts
                    .get(Facet::from_path([facet.as_str()]))
                    .filter_map(|(f, n)| f.to_path().last().map(|v| ((*v).to_owned(), n)))
                    .collect();
                values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                facets.push((facet.clone(), values));
            }
        }
        Ok(Outcome {
            hits,
            total: total as u64,
            facets,
        })
    }

    /// The query of one word or phrase: a match in any field of any
    /// language present, each analysed as its language analyses text.
    fn words_query(
        &self,
        present: &mut [(languages::Lang, TextAnalyzer)],
        words: &Words,
    ) -> Box<dyn Query> {
        let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (lang, analyzer) in present.iter_mut() {
            let tokens: Vec<String> = words
                .iter()
                .flat_map(|w| languages::analyse(analyzer, w))
                .collect();
            if tokens.is_empty() {
                continue;
            }
            let text = self.fields.text[lang.index];
            for (field, boost) in text.all().into_iter().zip(BOOSTS) {
                let terms: Vec<Term> = tokens
                    .iter()
                    .map(|t| Term::from_field_text(field, t))
                    .collect();
                let query: Box<dyn Query> = if terms.len() == 1 {
                    Box::new(TermQuery::new(
                        terms[0].clone(),
                        IndexRecordOption::WithFreqs,
                    ))
                } else {
                    Box::new(PhraseQuery::new(terms))
                };
                alternatives.push((Occur::Should, Box::new(BoostQuery::new(query, boost))));
            }
        }
        Box::new(BooleanQuery::new(alternatives))
    }

    /// The records every partner may see, in the current searcher.
    fn public_docs(&self, searcher: &Searcher) -> Result<Arc<PublicDocs>> {
        let generation = searcher.generation().generation_id();
        let mut cached = self
            .stats
            .lock()
            .map_err(|_| index_error("statistics lock poisoned"))?;
        if let Some(public) = cached.as_ref().filter(|p| p.generation == generation) {
            return Ok(public.clone());
        }
        let everyone = Term::from_field_text(self.fields.audience, EVERYONE);
        let mut docs = Vec::with_capacity(searcher.segment_readers().len());
        let mut count = 0u64;
        for segment in searcher.segment_readers() {
            let mut public = vec![false; segment.max_doc() as usize];
            let postings = segment
                .inverted_index(self.fields.audience)
                .map_err(index_error)?
                .read_postings(&everyone, IndexRecordOption::Basic)
                .map_err(index_error)?;
            if let Some(mut postings) = postings {
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    if segment.alive_bitset().is_none_or(|a| a.is_alive(doc)) {
                        public[doc as usize] = true;
                        count += 1;
                    }
                    doc = postings.advance();
                }
            }
            docs.push(public);
        }
        let public = Arc::new(PublicDocs {
            generation,
            docs,
            count,
            tokens: Mutex::default(),
            doc_freqs: Mutex::default(),
        });
        *cached = Some(public.clone());
        Ok(public)
    }
}

/// Which documents of each segment every partner may see, and the
/// statistics computed from them for this searcher generation.
pub struct PublicDocs {
    generation: u64,
    /// By segment, in the searcher's order.
    docs: Vec<Vec<bool>>,
    count: u64,
    tokens: Mutex<HashMap<Field, u64>>,
    doc_freqs: Mutex<HashMap<Term, u64>>,
}

/// Terms whose public document frequency is kept per generation.
const DOC_FREQS_KEPT: usize = 10_000;

/// BM25 statistics from the records every partner may see, so a score
/// says nothing of records the caller cannot see: adding restricted
/// records leaves every score and the order as they were.
struct PublicStats<'a> {
    searcher: &'a Searcher,
    public: Arc<PublicDocs>,
}

impl Bm25StatisticsProvider for PublicStats<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        if let Some(n) = self
            .public
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(&field).copied())
        {
            return Ok(n);
        }
        let mut total = 0u64;
        for (segment, public) in self
            .searcher
            .segment_readers()
            .iter()
            .zip(&self.public.docs)
        {
            let norms = segment.get_fieldnorms_reader(field)?;
            for (doc, _) in public.iter().enumerate().filter(|(_, p)| **p) {
                total += u64::from(norms.fieldnorm(doc as u32));
            }
        }
        // Never zero: BM25 divides by the average length.
        let total = total.max(1);
        if let Ok(mut tokens) = self.public.tokens.lock() {
            tokens.insert(field, total);
        }
        Ok(total)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.public.count.max(1))
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        if let Some(n) = self
            .public
            .doc_freqs
            .lock()
            .ok()
            .and_then(|d| d.get(term).copied())
        {
            return Ok(n);
        }
        let mut n = 0u64;
        for (segment, public) in self
            .searcher
            .segment_readers()
            .iter()
            .zip(&self.public.docs)
        {
            let postings = segment
                .inverted_index(term.field())?
                .read_postings(term, IndexRecordOption::Basic)?;
            if let Some(mut postings) = postings {
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    if public.get(doc as usize).copied().unwrap_or(false) {
                        n += 1;
                    }
                    doc = postings.advance();
                }
            }
        }
        if let Ok(mut freqs) = self.public.doc_freqs.lock() {
            if freqs.len() >= DOC_FREQS_KEPT {
                freqs.clear();
            }
            freqs.insert(term.clone(), n);
        }
        Ok(n)
    }
}
