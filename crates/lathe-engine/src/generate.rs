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

struct Row {
    index: usize,
    rng: Rng,
    tokens: Vec<u32>,
    done: Option<&'static str>,
    stop_token: Option<u32>,
    text: String,
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
    let dev = &model.device;
    let b = prompts.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    if sampling.len() != b {
        return Err(EngineError::Data("one sampling setting per prompt is required".into()));
    }
    let most_new = sampling.iter().map(|s| s.max_tokens).max().unwrap_or(0);
    if prompts.iter().any(Vec::is_empty) {
        return Err(EngineError::Data("a prompt has no tokens".into()));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + most_new > model.max_positions() {
        return Err(EngineError::Data(format!(
            "the prompt ({longest} tokens) plus max_tokens ({most_new}) exceeds the model's {} positions",
            model.max_positions()
        )));
    }
    let pad = stop_ids.first().copied().unwrap_or(0);
    // Each row's prompt among the distinct prompts, which alone are
    // prefilled.
    let mut distinct: Vec<&Vec<u32>> = Vec::new();
    let mut of_row: Vec<u32> = Vec::with_capacity(b);
    {
        let mut seen: std::collections::HashMap<&[u32], u32> = std::collections::HashMap::new();
        for p in prompts {
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
    let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
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
    let mut rows: Vec<Row> = (0..b)
        .map(|i| Row {
            index: i,
            rng: Rng::derive(sampling[i].seed, &[sampling[i].stream.unwrap_or(i as u64)]),
            tokens: Vec::new(),
            done: None,
            stop_token: None,
            text: String::new(),
        })
        .collect();
    let mut cache = KvCache::with_capacity(longest + most_new);
    let hidden = step(model, adapter, &mut cache, ids, pos, &valid, longest)?;
    let last: Vec<u32> = (0..d).map(|r| (r * longest + longest - 1) as u32).collect();
    let mut logits = model.logits(&hidden.index_select(&Tensor::from_vec(last, d, dev)?, 0)?, false)?;
    if d < b {
        let rows = Tensor::from_vec(of_row.clone(), b, dev)?;
        cache.retain_rows(&rows)?;
        logits = logits.index_select(&rows, 0)?;
        valid = of_row.iter().map(|&k| valid[k as usize].clone()).collect();
    }
    // `live[k]` is the row at batch position k.
    let mut live: Vec<usize> = (0..b).collect();
    let mut finished: Vec<Option<Row>> = (0..b).map(|_| None).collect();
    let mut rows_opt: Vec<Option<Row>> = rows.drain(..).map(Some).collect();
    loop {
        let vocab = logits.dim(1)?;
        let flat = f32_vec(&logits)?;
        let mut next = Vec::with_capacity(live.len());
        for (k, &r) in live.iter().enumerate() {
            let row = rows_opt[r].as_mut().expect("live rows are present");
            let s = &sampling[r];
            let logits = penalized(&flat[k * vocab..(k + 1) * vocab], s, &row.tokens);
            let tok = sample(&logits, s, &mut row.rng);
            next.push(tok);
            if stop_ids.contains(&tok) {
                row.done = Some("stop");
                row.stop_token = Some(tok);
                continue;
            }
            row.tokens.push(tok);
            if !on_token(row.index, tok) {
                row.done = Some("cancelled");
                continue;
            }
            if !s.stop.is_empty() {
                row.text = tokenizer.decode(&row.tokens, true);
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
        // Drop finished rows from the batch and the cache.
        let keep: Vec<usize> = (0..live.len())
            .filter(|&k| rows_opt[live[k]].as_ref().is_some_and(|r| r.done.is_none()))
            .collect();
        for &r in &live {
            if rows_opt[r].as_ref().is_some_and(|row| row.done.is_some()) {
                finished[r] = rows_opt[r].take();
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() != live.len() {
            let idx = Tensor::from_vec(keep.iter().map(|&k| k as u32).collect::<Vec<_>>(), keep.len(), dev)?;
            cache.retain_rows(&idx)?;
            valid = keep.iter().map(|&k| valid[k].clone()).collect();
            next = keep.iter().map(|&k| next[k]).collect();
            live = keep.iter().map(|&k| live[k]).collect();
        }
        let n = live.len();
        for v in valid.iter_mut() {
            v.push(true);
        }
        let positions: Vec<u32> = live.iter().map(|&r| next_pos[r]).collect();
        for &r in &live {
            next_pos[r] += 1;
        }
        debug_assert_eq!(next.len(), n);
        let hidden = step(model, adapter, &mut cache, next, positions, &valid, 1)?;
        logits = model.logits(&hidden, false)?;
    }
    Ok(finished
        .into_iter()
        .zip(prompts)
        .zip(sampling)
        .map(|((row, p), s)| {
            let row = row.expect("every row finishes");
            let text = if s.stop.is_empty() {
                tokenizer.decode(&row.tokens, true)
            } else {
                row.text
            };
            Generated {
                tokens: row.tokens,
                text,
                finish_reason: row.done.unwrap_or("length"),
                stop_token: row.stop_token,
                prompt_tokens: p.len(),
            }
        })
        .collect())
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
