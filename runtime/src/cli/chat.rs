//! `chat`: an interactive conversation rendered with the model's own Jinja chat template
//! (`tokenizer.chat_template`). Each turn re-renders the whole conversation and evaluates
//! only the tokens after the longest prefix already in the cache. Ctrl-C stops the
//! current reply; Ctrl-D (end of input) ends the chat.

use std::io::Write;

use super::session::{Session, Stop};
use super::SamplingArgs;
use crate::chat_template::{ChatTemplate, Message};
use crate::model::Model;
use crate::sampler::Sampler;

#[derive(clap::Args, Debug)]
pub(super) struct ChatArgs {
    /// A system message to start the conversation with.
    #[arg(long = "system")]
    system: Option<String>,
    /// Most tokens per reply (-1: until the model ends its turn or the context is full).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Context size in tokens; 0 means the size compiled in.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx_size: usize,
    /// Threads (default: one per physical core).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Writes to stdout and keeps a copy of the text.
struct Tee<'a> {
    out: std::io::StdoutLock<'a>,
    text: Vec<u8>,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        self.out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

pub(super) fn chat<M: Model>(args: &ChatArgs) -> Result<(), String> {
    let n_ctx = if args.ctx_size == 0 {
        M::CONFIG.n_ctx
    } else {
        args.ctx_size
    };
    if n_ctx > M::CONFIG.n_ctx {
        return Err(format!(
            "-c {n_ctx} is more than this binary was compiled for ({})",
            M::CONFIG.n_ctx
        ));
    }
    let threads = super::threads_or_default(args.threads)?;
    let mut sampler = Sampler::new(args.sampling.config(n_ctx)?);
    let mut session = Session::<M>::new(threads, n_ctx, 512)?;
    let template = ChatTemplate::of(&session.tok)
        .map_err(|e| format!("{e}; use plain generation with -p instead"))?;
    let budget = if args.n_predict < 0 {
        usize::MAX
    } else {
        args.n_predict as usize
    };

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message {
            role: "system".into(),
            content: system.clone(),
        });
    }
    super::catch_interrupts();
    let mut editor =
        rustyline::DefaultEditor::new().map_err(|e| format!("cannot read input: {e}"))?;
    eprintln!("chat: type a message and press Enter. Ctrl-C stops a reply, Ctrl-D quits.");
    loop {
        let line = match editor.readline("> ") {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(format!("reading input: {e}")),
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        messages.push(Message {
            role: "user".into(),
            content: line,
        });
        let ids = template.prompt(&session.tok, &messages)?;
        let common = session
            .history
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        // Re-evaluate at least the last token so that fresh logits exist.
        let common = common.min(ids.len() - 1);
        session.truncate(common);
        if let Err(e) = session.feed(&ids[common..]) {
            eprintln!("\n{e}\nThe conversation no longer fits; start a new chat (or raise -c).");
            break;
        }
        let stdout = std::io::stdout();
        let mut tee = Tee {
            out: stdout.lock(),
            text: Vec::new(),
        };
        let stop = session.generate(&mut sampler, budget, &[], &mut tee);
        let _ = writeln!(tee.out);
        let reply = String::from_utf8_lossy(&tee.text).into_owned();
        messages.push(Message {
            role: "assistant".into(),
            content: reply,
        });
        match stop {
            Stop::Interrupted => {
                super::clear_interrupt();
                eprintln!("[reply stopped]");
            }
            Stop::ContextFull => {
                eprintln!("[the context is full: start a new chat or raise -c]");
                break;
            }
            Stop::OutputClosed => break,
            _ => {}
        }
    }
    Ok(())
}
