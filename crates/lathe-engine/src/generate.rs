//! KV-cached, batched generation: many prompts at once (left-padded, one
//! prefill, then one decode step for all live rows; finished rows leave the
//! batch), with temperature, top-k, top-p, presence and frequency
//! penalties, a seed, max tokens and stop sequences. Identical prompts (GRPO's group, `n` samples of one request)
//! are prefilled once and their keys and values copied to each row.

use candle_core::Tensor;

use super::lora::Adapter;
use super::model::{BaseModel, Input, KvCache, f32_vec, padded_mask};
use super::rng::Rng;
use super::tokenizer::Tokenizer;
use super::{EngineError, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// 0 means no limit.
    pub top_k: usize,
    pub max_tokens: usize,
    pub seed: u64,
    pub stop: Vec<String>,
    /// OpenAI's penalties on tokens the answer already holds: each
    /// candidate's logit loses `presence` once it appeared and `frequency`
    /// for every time it did (negative values favour repeats).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// OpenAI's `logit_bias`: added to these tokens' logits at every step
    /// (-100 bans a token, 100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// The random stream this row draws from (with its seed). None: its
    /// place in the batch, so rows of one seed (GRPO's group of answers to
    /// one prompt) each sample differently. Served completions name their
    /// own, so that an answer does not depend on what is decoded beside it.
    pub stream: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 256,
            seed: 0,
            stop: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            stream: None,
        }
    }
}

/// `logits` with OpenAI's logit bias added and its presence and frequency
/// penalties applied for the tokens already generated (borrowed unchanged
/// when there is nothing to apply).
pub fn penalized<'a>(logits: &'a [f32], s: &Sampling, generated: &[u32]) -> std::borrow::Cow<'a, [f32]> {
    let penalties = (s.presence_penalty != 0.0 || s.frequency_penalty != 0.0) && !generated.is_empty();
    if !penalties && s.logit_bias.is_empty() {
        return std::borrow::Cow::Borrowed(logits);
    }
    let mut out = logits.to_vec();
    for &(t, bias) in &s.logit_bias {
        if let Some(v) = out.get_mut(t as usize) {
            *v += bias;
        }
    }
    if !penalties {
        return std::borrow::Cow::Owned(out);
    }
    let mut counts = std::collections::HashMap::<u32, u32>::new();
    for &t in generated {
        *counts.entry(t).or_default() += 1;
    }
    for (t, n) in counts {
        if let Some(v) = out.get_mut(t as usize) {
            *v -= s.presence_penalty + s.frequency_penalty * n as f32;
        }
    }
    std::borrow::Cow::Owned(out)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub text: String,
    /// "stop", "length", or "cancelled" (see [`generate_streaming`]).
    pub finish_reason: &'static str,
    /// The stop id that ended the row (not in `tokens`), if one did.
    pub stop_token: Option<u32>,
    pub prompt_tokens: usize,
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold(
                (0usize, f32::NEG_INFINITY),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
            .0 as u32
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.top_k > 0 {
        cand.truncate(s.top_k);
    }
    let max = cand[0].1 as f64;
    let mut probs: Vec<f64> = cand
        .iter()
        .map(|(_, v)| ((*v as f64 - max) / s.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= s.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let t: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= t);
    }
    let mut r = rng.next_f64();
    for (i, p) in probs.iter().enumerate() {
        if r < *p {
            return cand[i].0;
        }
        r -= p;
    }
    cand[probs.len() - 1].0
}

/// One forward over `l` new tokens per row (row-major `ids` and rotary
/// `positions`), extending the cache; `valid` marks each row's real keys.
fn step(
    model: &BaseModel,
    adapter: Option<&Adapter>,
    cache: &mut KvCache,
    ids: Vec<u32>,
    positions: Vec<u32>,
    valid: &[Vec<bool>],
    l: usize,
) -> Result<Tensor> {
    let dev = &model.device;
    let b = valid.len();
    let ids = Tensor::from_vec(ids, (b, l), dev)?;
    let positions = Tensor::from_vec(positions, b * l, dev)?;
    let mask = padded_mask(valid, l, dev)?;
    model.forward(
        &Input {
            ids: &ids,
            positions: &positions,
            mask: Some(&mask),
            segments: None,
        },
        adapter,
        Some(cache),
        None,
    )
}

/// Generates for every prompt; `on_token(prompt index, token)` sees each
/// new token as it is chosen (for streaming).
pub fn generate(
    model: &BaseModel,
    adapter: Option<&Adapter>,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    sampling: &[Sampling],
    stop_ids: &[u32],
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generated>> {
    generate_streaming(model, adapter, tokenizer, prompts, sampling, stop_ids, &mut |i, t| {
        on_token(i, t);
        true
    })
}

/// [`generate`] where `on_token` also says whether the row goes on: `false`
/// (its reader went away) ends that row at once with finish reason
/// "cancelled", so the batch stops spending steps on it.
pub fn generate_streaming(
    model: &BaseModel,
    adapter: Option<&Adapter>,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    sampling: &[Sampling],
    stop_ids: &[u32],
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> Result<Vec<Generated>> {
    if sampling.len() != prompts.len() {
        return Err(EngineError::Data("one sampling setting per prompt is required".into()));
    }
    let mut batch = Batch::new(model, adapter, tokenizer, stop_ids);
    let mut out: Vec<Option<Generated>> = vec![None; prompts.len()];
    let rows = prompts
        .iter()
        .cloned()
        .zip(sampling.iter().cloned())
        .enumerate()
        .collect();
    for (k, g) in batch.join(rows, on_token)? {
        out[k] = Some(g);
    }
    while !batch.is_empty() {
        for (k, g) in batch.step(on_token)? {
            out[k] = Some(g);
        }
    }
    Ok(out.into_iter().map(|g| g.expect("every row finishes")).collect())
}

/// A row that finished: the caller's key and its answer.
pub type Finished = (usize, Generated);

/// One row of a running [`Batch`].
struct Live {
    key: usize,
    sampling: Sampling,
    rng: Rng,
    tokens: Vec<u32>,
    /// The decoded text, kept up to date only when stop sequences need it.
    text: String,
    done: Option<&'static str>,
    stop_token: Option<u32>,
    /// Which of the cache's positions are this row's.
    valid: Vec<bool>,
    next_pos: u32,
    /// The token chosen last, fed to the next step.
    next: u32,
    prompt_tokens: usize,
}

/// Cache positions that every row holds as padding are dropped once there
/// are this many (a long-running batch would otherwise grow without end).
const TRIM_AT: usize = 64;

/// A running batch of generations on one model and adapter that rows join
/// and leave at token boundaries (continuous batching): [`Batch::join`]
/// prefills new prompts (identical ones once) and adds them beside the rows
/// already decoding; [`Batch::step`] decodes one token for every row and
/// hands back the rows that finished, whose place in the cache is freed at
/// once. Every row computes alone (its own positions, its own keys, its own
/// random stream), so what it generates does not depend on who shares the
/// batch.
pub struct Batch<'a> {
    model: &'a BaseModel,
    adapter: Option<&'a Adapter>,
    tokenizer: &'a Tokenizer,
    stop_ids: &'a [u32],
    cache: KvCache,
    rows: Vec<Live>,
}

impl<'a> Batch<'a> {
    pub fn new(
        model: &'a BaseModel,
        adapter: Option<&'a Adapter>,
        tokenizer: &'a Tokenizer,
        stop_ids: &'a [u32],
    ) -> Self {
        Batch {
            model,
            adapter,
            tokenizer,
            stop_ids,
            cache: KvCache::default(),
            rows: Vec::new(),
        }
    }

    /// Rows decoding.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Positions the batch's cache spans (its rows' longest history, with
    /// padding).
    pub fn span(&self) -> usize {
        self.cache.len()
    }

    /// Prefills `rows` (caller's key, prompt, sampling), chooses each one's
    /// first token and adds those that go on to the batch; returns the rows
    /// that finished at once. `on_token(key, token)` sees every token chosen
    /// and answers whether its row goes on.
    pub fn join(
        &mut self,
        rows: Vec<(usize, (Vec<u32>, Sampling))>,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Finished>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.model;
        let dev = &model.device;
        for (_, (p, s)) in &rows {
            if p.is_empty() {
                return Err(EngineError::Data("a prompt has no tokens".into()));
            }
            if p.len() + s.max_tokens > model.max_positions() {
                return Err(EngineError::Data(format!(
                    "the prompt ({} tokens) plus max_tokens ({}) exceeds the model's {} positions",
                    p.len(),
                    s.max_tokens,
                    model.max_positions()
                )));
            }
        }
        let b = rows.len();
        let longest = rows.iter().map(|(_, (p, _))| p.len()).max().unwrap_or(0);
        let most_new = rows.iter().map(|(_, (_, s))| s.max_tokens).max().unwrap_or(0);
        let pad = self.stop_ids.first().copied().unwrap_or(0);
        // Each row's prompt among the distinct prompts, which alone are
        // prefilled.
        let mut distinct: Vec<&[u32]> = Vec::new();
        let mut of_row: Vec<u32> = Vec::with_capacity(b);
        {
            let mut seen: std::collections::HashMap<&[u32], u32> = std::collections::HashMap::new();
            for (_, (p, _)) in &rows {
                let k = *seen.entry(p.as_slice()).or_insert_with(|| {
                    distinct.push(p);
                    distinct.len() as u32 - 1
                });
                of_row.push(k);
            }
        }
        let d = distinct.len();
        let mut ids = Vec::with_capacity(d * longest);
        let mut pos = Vec::with_capacity(d * longest);
        let mut valid: Vec<Vec<bool>> = Vec::with_capacity(d);
        for p in &distinct {
            let padding = longest - p.len();
            ids.extend(std::iter::repeat_n(pad, padding));
            ids.extend_from_slice(p);
            pos.extend(std::iter::repeat_n(0u32, padding));
            pos.extend(0..p.len() as u32);
            let mut v = vec![false; padding];
            v.extend(std::iter::repeat_n(true, p.len()));
            valid.push(v);
        }
        let mut cache = KvCache::with_capacity(longest + most_new);
        let hidden = step(model, self.adapter, &mut cache, ids, pos, &valid, longest)?;
        let last: Vec<u32> = (0..d).map(|r| (r * longest + longest - 1) as u32).collect();
        let mut logits = model.sampling_logits(&hidden.index_select(&Tensor::from_vec(last, d, dev)?, 0)?)?;
        if d < b {
            let idx = Tensor::from_vec(of_row.clone(), b, dev)?;
            cache.retain_rows(&idx)?;
            logits = logits.index_select(&idx, 0)?;
        }
        let mut new: Vec<Live> = rows
            .into_iter()
            .zip(&of_row)
            .map(|((key, (prompt, sampling)), &k)| Live {
                key,
                rng: Rng::derive(sampling.seed, &[sampling.stream.unwrap_or(key as u64)]),
                sampling,
                tokens: Vec::new(),
                text: String::new(),
                done: None,
                stop_token: None,
                valid: valid[k as usize].clone(),
                next_pos: prompt.len() as u32,
                next: pad,
                prompt_tokens: prompt.len(),
            })
            .collect();
        self.choose(&mut new, &logits, on_token)?;
        let (finished, mut going) = self.settle(new, &mut cache)?;
        if going.is_empty() {
            return Ok(finished);
        }
        let span = self.cache.len().max(cache.len());
        let room = self
            .rows
            .iter()
            .chain(&going)
            .map(|r| r.sampling.max_tokens - r.tokens.len())
            .max()
            .unwrap_or(0);
        let (before_mine, before_new) = self.cache.join(&cache, span + room)?;
        for r in &mut self.rows {
            r.valid.splice(0..0, std::iter::repeat_n(false, before_mine));
        }
        for r in &mut going {
            r.valid.splice(0..0, std::iter::repeat_n(false, before_new));
        }
        self.rows.append(&mut going);
        Ok(finished)
    }

    /// Decodes one token for every row; returns the rows that finished.
    pub fn step(&mut self, on_token: &mut dyn FnMut(usize, u32) -> bool) -> Result<Vec<Finished>> {
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = std::mem::take(&mut self.rows);
        for r in &mut rows {
            r.valid.push(true);
        }
        let valid: Vec<Vec<bool>> = rows.iter().map(|r| r.valid.clone()).collect();
        let ids: Vec<u32> = rows.iter().map(|r| r.next).collect();
        let positions: Vec<u32> = rows.iter().map(|r| r.next_pos).collect();
        for r in &mut rows {
            r.next_pos += 1;
        }
        let mut cache = std::mem::take(&mut self.cache);
        let hidden = step(self.model, self.adapter, &mut cache, ids, positions, &valid, 1)?;
        let logits = self.model.sampling_logits(&hidden)?;
        self.choose(&mut rows, &logits, on_token)?;
        let (finished, going) = self.settle(rows, &mut cache)?;
        self.rows = going;
        self.cache = if self.rows.is_empty() {
            KvCache::default()
        } else {
            cache
        };
        // Positions every row holds as padding (rows that left took theirs
        // with them) are dropped.
        let lead = self
            .rows
            .iter()
            .map(|r| r.valid.iter().take_while(|v| !**v).count())
            .min()
            .unwrap_or(0);
        if lead >= TRIM_AT {
            self.cache.trim_front(lead)?;
            for r in &mut self.rows {
                r.valid.drain(..lead);
            }
        }
        Ok(finished)
    }

    /// Chooses each row's next token from its row of `logits`.
    fn choose(&self, rows: &mut [Live], logits: &Tensor, on_token: &mut dyn FnMut(usize, u32) -> bool) -> Result<()> {
        let vocab = logits.dim(1)?;
        let flat = f32_vec(logits)?;
        for (k, row) in rows.iter_mut().enumerate() {
            let s = &row.sampling;
            let logits = penalized(&flat[k * vocab..(k + 1) * vocab], s, &row.tokens);
            let tok = sample(&logits, s, &mut row.rng);
            row.next = tok;
            if self.stop_ids.contains(&tok) {
                row.done = Some("stop");
                row.stop_token = Some(tok);
                continue;
            }
            row.tokens.push(tok);
            if !on_token(row.key, tok) {
                row.done = Some("cancelled");
                continue;
            }
            if !s.stop.is_empty() {
                row.text = self.tokenizer.decode(&row.tokens, true);
                if let Some(cut) = s.stop.iter().filter_map(|s| row.text.find(s.as_str())).min() {
                    row.text.truncate(cut);
                    row.done = Some("stop");
                    continue;
                }
            }
            if row.tokens.len() >= s.max_tokens {
                row.done = Some("length");
            }
        }
        Ok(())
    }

    /// Splits `rows` (in `cache`'s row order) into the finished, as
    /// answers, and those that go on, whose cache rows alone are kept.
    fn settle(&self, rows: Vec<Live>, cache: &mut KvCache) -> Result<(Vec<Finished>, Vec<Live>)> {
        if rows.iter().all(|r| r.done.is_none()) {
            return Ok((Vec::new(), rows));
        }
        let keep: Vec<u32> = (0..rows.len() as u32)
            .filter(|&k| rows[k as usize].done.is_none())
            .collect();
        if !keep.is_empty() {
            let n = keep.len();
            cache.retain_rows(&Tensor::from_vec(keep, n, &self.model.device)?)?;
        }
        let mut finished = Vec::new();
        let mut going = Vec::new();
        for row in rows {
            match row.done {
                None => going.push(row),
                Some(reason) => {
                    let text = if row.sampling.stop.is_empty() {
                        self.tokenizer.decode(&row.tokens, true)
                    } else {
                        row.text
                    };
                    finished.push((
                        row.key,
                        Generated {
                            tokens: row.tokens,
                            text,
                            finish_reason: reason,
                            stop_token: row.stop_token,
                            prompt_tokens: row.prompt_tokens,
                        },
                    ));
                }
            }
        }
        Ok((finished, going))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_lower_the_logits_of_tokens_already_generated() {
        let logits = [1.0f32, 3.0, 2.9, 0.5];
        let greedy = Sampling::default();
        let mut rng = Rng::new(0);
        assert_eq!(sample(&penalized(&logits, &greedy, &[1, 1]), &greedy, &mut rng), 1);
        // Token 1 twice: 3.0 - 0.5 - 2 x 0.25 = 2.0, below token 2's 2.9.
        let penalised = Sampling {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Sampling::default()
        };
        let after = penalized(&logits, &penalised, &[1, 1, 3]);
        assert_eq!(&after[..], &[1.0, 2.0, 2.9, -0.25]);
        assert_eq!(sample(&after, &penalised, &mut rng), 2);
        // Nothing generated yet, or no penalty: the logits as they were.
        assert!(matches!(
            penalized(&logits, &penalised, &[]),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(
            penalized(&logits, &greedy, &[1]),
            std::borrow::Cow::Borrowed(_)
        ));
        // A bias of -100 bans the best token; +100 lifts the worst.
        let banned = Sampling {
            logit_bias: vec![(1, -100.0), (3, 100.0)],
            ..Sampling::default()
        };
        assert_eq!(&penalized(&logits, &banned, &[])[..], &[1.0, -97.0, 2.9, 100.5]);
        // A negative penalty favours what was said.
        let repeat = Sampling {
            frequency_penalty: -1.0,
            ..Sampling::default()
        };
        assert_eq!(sample(&penalized(&logits, &repeat, &[0, 0, 0]), &repeat, &mut rng), 0);
    }
}
