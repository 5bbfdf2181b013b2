//! Supervised fine-tuning, the first [`Method`]: OpenAI chat JSONL → token
//! ids with a per-token "trained" flag, and the completion-only loss.
//!
//! The conversation is rendered with the model's chat template; a token is
//! trained when it belongs to an assistant message whose `weight` is not 0
//! (its content and tool calls and the template's end-of-turn marker),
//! found by rendering each assistant turn's prefix with the generation
//! prompt and the turn itself, as TRL's completion-only loss does. The loss
//! of a batch is the summed negative log-likelihood of its trained tokens
//! over their count in the whole accumulated batch (TRL's rule).

use candle_core::Tensor;
use serde_json::Value;

use super::chat_template::ChatTemplate;
use super::lora::Adapter;
use super::method::{Encoder, Method, Policy, StepInfo, StepSummary, Validation, encode_lines, validate_by_loss};
use super::model::{BaseModel, Input, Segments, TrainState, log_softmax};
use super::tokenizer::Tokenizer;
use super::{EngineError, Result};

/// The name of SFT's token accuracy among a step's values: the share of
/// trained tokens the model's argmax got right (the job metrics
/// `train_mean_token_accuracy` and `valid_mean_token_accuracy`).
pub const TOKEN_ACCURACY: &str = "mean_token_accuracy";

#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `trained[j]`: the loss includes predicting `ids[j]` from `ids[..j]`.
    pub trained: Vec<bool>,
}

impl Example {
    pub fn trained_tokens(&self) -> usize {
        self.trained.iter().skip(1).filter(|t| **t).count()
    }
}

/// Tokenizes one SFT line. `max_len` truncates from the end, as OpenAI
/// does. Returns None for a line that has nothing to train on.
pub fn encode_chat(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    bos: Option<u32>,
    line: &Value,
    max_len: usize,
) -> Result<Option<Example>> {
    let messages = line["messages"]
        .as_array()
        .ok_or_else(|| EngineError::Data("the line has no messages array".into()))?;
    let tools = line.get("tools").filter(|t| !t.is_null());
    let render = |msgs: &[Value], gen_prompt: bool| {
        template
            .render(msgs, tools, gen_prompt)
            .map_err(|e| EngineError::Data(format!("chat template: {e}")))
    };
    let full = render(messages, false)?;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m["role"] != "assistant" || m.get("weight").and_then(Value::as_f64) == Some(0.0) {
            continue;
        }
        let prefix = render(&messages[..i], true)?;
        let upto = render(&messages[..=i], false)?;
        if !upto.starts_with(&prefix) || !full.starts_with(&upto) {
            return Err(EngineError::Data(
                "the chat template does not render conversations prefix by prefix; \
                 cannot tell the assistant's tokens apart"
                    .into(),
            ));
        }
        if upto.len() > prefix.len() {
            spans.push((prefix.len(), upto.len()));
        }
    }
    if spans.is_empty() {
        return Ok(None);
    }
    let mut ids = Vec::new();
    let mut trained = Vec::new();
    if let Some(b) = bos
        && tokenizer.add_bos()
        && !tokenizer.id_to_token(b).is_some_and(|t| full.starts_with(t))
    {
        ids.push(b);
        trained.push(false);
    }
    let mut at = 0;
    for (s, e) in spans {
        for (piece, flag) in [(&full[at..s], false), (&full[s..e], true)] {
            let t = tokenizer.encode(piece, true);
            trained.extend(std::iter::repeat_n(flag, t.len()));
            ids.extend(t);
        }
        at = e;
    }
    let t = tokenizer.encode(&full[at..], true);
    trained.extend(std::iter::repeat_n(false, t.len()));
    ids.extend(t);
    ids.truncate(max_len);
    trained.truncate(max_len);
    let ex = Example { ids, trained };
    Ok((ex.trained_tokens() > 0).then_some(ex))
}

/// Reads an SFT JSONL file (already validated at upload) into examples.
pub fn encode_file(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    bos: Option<u32>,
    bytes: &[u8],
    max_len: usize,
) -> Result<Vec<Example>> {
    let encoder = Encoder {
        tokenizer,
        template,
        bos,
        max_len,
    };
    encode_lines(&Sft, &encoder, bytes)
}

/// Loss pieces of one packed micro-batch: the summed negative log-likelihood
/// over trained tokens (a scalar tensor), their count and how many the
/// model got right (argmax).
pub fn packed_loss(
    model: &BaseModel,
    adapter: &Adapter,
    examples: &[&Example],
    train: Option<TrainState<'_>>,
) -> Result<(Tensor, usize, usize)> {
    let dev = &model.device;
    let mut ids = Vec::new();
    let mut pos = Vec::new();
    let mut lengths = Vec::with_capacity(examples.len());
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for ex in examples {
        let base = ids.len();
        lengths.push(ex.ids.len());
        for (j, &id) in ex.ids.iter().enumerate() {
            ids.push(id);
            pos.push(j as u32);
            if j > 0 && ex.trained[j] {
                rows.push((base + j - 1) as u32);
                targets.push(id);
            }
        }
    }
    let l = ids.len();
    if pos.iter().any(|&p| p as usize >= model.max_positions()) {
        return Err(EngineError::Data(format!(
            "an example is longer than the model's {} positions",
            model.max_positions()
        )));
    }
    let ids_t = Tensor::from_vec(ids, (1, l), dev)?;
    let pos_t = Tensor::from_vec(pos, l, dev)?;
    let segments = Segments::new(&lengths, dev)?;
    let track = train.is_some();
    let hidden = model.forward(
        &Input {
            ids: &ids_t,
            positions: &pos_t,
            mask: None,
            segments: Some(&segments),
        },
        Some(adapter),
        None,
        train,
    )?;
    let n = rows.len();
    let rows_t = Tensor::from_vec(rows, n, dev)?;
    let picked = hidden.index_select(&rows_t, 0)?;
    let logits = model.logits(&picked, track)?;
    let logp = log_softmax(&logits)?;
    let targets_t = Tensor::from_vec(targets.clone(), (n, 1), dev)?;
    let nll = logp.gather(&targets_t, 1)?.neg()?.sum_all()?;
    let argmax = logits.detach().argmax(1)?.to_vec1::<u32>()?;
    let correct = argmax.iter().zip(&targets).filter(|(a, b)| a == b).count();
    Ok((nll, n, correct))
}

/// Supervised fine-tuning as a [`Method`]: an example is a conversation's
/// ids with trained flags, and it trains on its examples as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sft;

/// What SFT adds up over a step's micro-batches.
#[derive(Clone, Copy, Debug, Default)]
pub struct SftSums {
    /// Summed negative log-likelihood of the trained tokens.
    pub nll: f64,
    /// Trained tokens the model's argmax predicted.
    pub correct: usize,
}

impl Method for Sft {
    type Example = Example;
    type Unit<'a> = &'a Example;
    type Sums = SftSums;

    fn encode(&self, e: &Encoder<'_>, line: &Value) -> Result<Option<Example>> {
        encode_chat(e.tokenizer, e.template, e.bos, line, e.max_len)
    }

    fn begin_step<'a>(
        &mut self,
        _policy: Policy<'_>,
        _at: StepInfo,
        data: &'a [Example],
        batch: &[usize],
        _sums: &mut SftSums,
    ) -> Result<Vec<&'a Example>> {
        Ok(batch.iter().map(|&i| &data[i]).collect())
    }

    fn tokens(&self, unit: &&Example) -> usize {
        unit.ids.len()
    }

    fn normaliser(&self, units: &[&Example]) -> f64 {
        units.iter().map(|e| e.trained_tokens()).sum::<usize>().max(1) as f64
    }

    fn loss(
        &self,
        policy: Policy<'_>,
        units: &[&Example],
        normaliser: f64,
        train: Option<TrainState<'_>>,
        sums: &mut SftSums,
    ) -> Result<Tensor> {
        let (nll, _, correct) = packed_loss(policy.model, policy.adapter, units, train)?;
        sums.nll += nll.to_scalar::<f32>()? as f64;
        sums.correct += correct;
        Ok((nll / normaliser)?)
    }

    fn summarize(&self, sums: &SftSums, normaliser: f64) -> StepSummary {
        StepSummary {
            loss: sums.nll / normaliser,
            values: [(TOKEN_ACCURACY.to_string(), sums.correct as f64 / normaliser)].into(),
        }
    }

    fn validate(&mut self, policy: Policy<'_>, examples: &[Example], budget: usize) -> Result<Validation> {
        let units: Vec<&Example> = examples.iter().collect();
        validate_by_loss(self, policy, &units, budget)
    }
}
