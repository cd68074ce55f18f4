//! `prunekit`: prune neural networks end to end from the command line.

mod analysis_cmd;
mod bench;
mod bench_sparse;
mod commands;
mod prune_cmd;
mod report_cmd;
mod run_cmd;
mod table;
mod text_cmd;
mod zoo_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Tensors are allocated and freed at a high rate, many of them megabytes large. glibc's malloc
/// returns such blocks to the OS on free, so every new one page-faults in again; mimalloc keeps them.
/// Measured: the reference CNN's training step went from 33.8 ms to about 20 ms (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "prunekit",
    version,
    about = "Prune neural networks end to end: analyse, prune, recover, measure, write back"
)]
struct Cli {
    /// the architecture: for `train`, the built-in architecture to start from; with a state-dict
    /// MODEL (a PyTorch .pt / .pth / .bin or a .safetensors file of weights), the architecture its
    /// tensors are loaded into: a built-in name (`prunekit zoo list`) or a model file whose
    /// architecture is used (e.g. the same model's .onnx)
    #[arg(long, global = true, value_name = "NAME|FILE")]
    arch: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a small CNN on the built-in digits, prune half its channels and half the remaining
    /// weights, fine-tune, and print a before/after table.
    Demo {
        /// also write the dense and pruned models under DIR (DIR/dense, DIR/pruned)
        #[arg(long)]
        save: Option<PathBuf>,
        /// print one JSON object instead of the table
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write a model in another format: OUT's extension names it (`.onnx`, `.safetensors`,
    /// `.pt`; anything else: a prunekit model directory), or `--format hf` for a Hugging Face
    /// directory of the family the model was read from.
    Export {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// tokens per sample of a Transformer (read from a Hugging Face directory or GGUF file,
        /// or a model pruned from one): the written model's sequence length (e.g. a fixed-T ONNX)
        #[arg(long, value_name = "T")]
        seq_len: Option<usize>,
        #[command(flatten)]
        hf: HfOutArgs,
    },
    /// Sentence embeddings of texts with an encoder (mean pooling over the attention mask, L2
    /// normalisation, as sentence-transformers computes them) and their cosines.
    Embed(text_cmd::EmbedArgs),
    /// Continue a prompt with a causal language model (greedy at temperature 0).
    Generate(text_cmd::GenerateArgs),
    /// Run a model on input arrays (NumPy .npy, batch axis first; one per model input, in order)
    /// and write its first output (or every output: OUT, OUT.1.npy, ...) as .npy.
    Predict {
        model: PathBuf,
        /// an input array; repeat for models with several inputs
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Layers, shapes, parameters, MACs and sparsity of a model (any format: a prunekit
    /// directory, .onnx, or a state dict with --arch); for an ONNX file, every node prunekit
    /// cannot import.
    Info {
        model: PathBuf,
        /// tokens per sample for a Transformer read from a Hugging Face directory or GGUF file
        /// (MACs per token depend on it; default: the tokenizer's padding length, else 128)
        #[arg(long, value_name = "T")]
        seq_len: Option<usize>,
        /// also measure: peak resident memory of one inference at batch N, latency at batch 1
        /// and at batch N (N x T tokens for a Transformer)
        #[arg(long, value_name = "N")]
        latency_batch: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Train a model directory (or a built-in architecture) on a dataset.
    Train {
        /// model to start from (any format `info` reads; a state dict with --arch); without it,
        /// a fresh --arch
        #[arg(long)]
        model: Option<PathBuf>,
        /// output model directory
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        train: TrainArgs,
        #[arg(long)]
        json: bool,
    },
    /// Prune a model: whole layers, structured units (channels, heads, hidden units, conv groups,
    /// found by the dependency analysis) and/or unstructured magnitude masks.
    Prune(prune_cmd::PruneArgs),
    /// Run a multi-stage recipe (TOML): train, prune (structured, layers, unstructured with a
    /// schedule, N:M, lottery ticket), recover (fine-tune, distillation), measure.
    Run(run_cmd::RunArgs),
    /// Prune each layer alone at several ratios and report the accuracy drop; propose per-layer
    /// ratios for a global target.
    Sensitivity(analysis_cmd::SensitivityArgs),
    /// Prune a model at several levels (each from the original) and measure every result.
    Sweep(analysis_cmd::SweepArgs),
    /// Fine-tune a (pruned) model with its masks held fixed; with --teacher and --text, distil
    /// the teacher's outputs (e.g. sentence embeddings) on unlabelled text lines instead.
    Finetune {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        distill: text_cmd::TextDistillArgs,
        #[command(flatten)]
        train: TrainArgs,
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a model: accuracy, loss, params, nonzeros, MACs, latency, file size; with
    /// --text, the perplexity of a language model on a text file.
    Eval {
        model: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// a plain-text file: the perplexity of a causal language model on it (sliding windows)
        #[arg(long, value_name = "FILE")]
        text: Option<PathBuf>,
        /// tokens per window with --text
        #[arg(long, default_value_t = 512, requires = "text")]
        context: usize,
        /// tokens between window starts with --text (default: the context; smaller strides give
        /// every scored token more context)
        #[arg(long, requires = "text")]
        stride: Option<usize>,
        /// score only the first N tokens of the text
        #[arg(long, requires = "text")]
        max_tokens: Option<usize>,
        /// also time inference at this batch size (5 warm-up runs, median and p90 of 30)
        #[arg(long, value_name = "N")]
        latency_batch: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Time the graph runtime against plain candle-nn, and prunekit's kernels against stock candle
    /// ops and PyTorch.
    Bench {
        /// timed iterations per measurement
        #[arg(long, default_value_t = 30)]
        iters: usize,
        /// also print each op's forward and backward time in a training step
        #[arg(long)]
        profile: bool,
        /// Python with PyTorch for the comparison columns (default: .venv-torch/bin/python if present)
        #[arg(long)]
        torch: Option<PathBuf>,
        /// only measure the peak memory of training steps of MODEL at BATCH in this process
        /// (`resnet20:128`); the full bench runs this in child processes
        #[arg(long, value_name = "MODEL:BATCH")]
        memory_of: Option<String>,
        /// with --memory-of: use candle's own ops instead of prunekit's kernels
        #[arg(long, requires = "memory_of")]
        stock: bool,
        /// measure the sparse inference kernels instead: per layer against our dense kernels
        /// over a sweep of sparsities and 2:4 (with each layer's crossover), against PyTorch's
        /// torch.sparse CSR matmul, and whole models at batch 1 (latency, peak memory)
        #[arg(long, conflicts_with_all = ["memory_of", "profile"])]
        sparse: bool,
        /// only measure the peak memory of ARCH pruned 90% running one batch-1 inference, dense or
        /// on its sparse plan, in this process (`resnet20:sparse`); --sparse runs this in child
        /// processes
        #[arg(long, value_name = "ARCH:dense|sparse", hide = true)]
        sparse_memory_of: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a report (report.md, report.html, report.json) of a model, or of a model before and
    /// after pruning with their comparison.
    Report(report_cmd::ReportArgs),
    /// Two models side by side on the same data: every measure, ratios and changes.
    Compare(report_cmd::CompareArgs),
    /// The built-in architectures: list them, or create one as a model directory.
    Zoo {
        #[command(subcommand)]
        command: zoo_cmd::ZooCommand,
    },
}

/// The Hugging Face output options of `export` and `prune`.
#[derive(Args, Clone, Debug, Default)]
pub struct HfOutArgs {
    /// `hf`: write a Hugging Face directory (safetensors under the original keys, config.json with
    /// the new widths, tokenizer files) instead of the format OUT's extension names
    #[arg(long, value_parser = ["hf"])]
    pub format: Option<String>,
    /// the dtype of the Hugging Face directory's weights
    #[arg(long, value_parser = ["f32", "f16", "bf16"], default_value = "f32")]
    pub dtype: String,
    /// write per-layer widths that the family's loaders cannot read (prunekit reads them back)
    #[arg(long)]
    pub allow_nonuniform: bool,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// dataset: `digits` (built in), `fashion-mnist` (Debian package dataset-fashion-mnist), or a
    /// directory holding Fashion-MNIST-style idx files; defaults to the model's training set
    #[arg(long)]
    data: Option<String>,
}

#[derive(Args, Clone)]
struct TrainArgs {
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    optimizer: OptimizerArg,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    schedule: ScheduleArg,
    /// random crop with this much zero padding (0: off)
    #[arg(long, default_value_t = 0)]
    crop_padding: usize,
    /// random horizontal flips
    #[arg(long)]
    hflip: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Criterion {
    L1,
    L2,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeArg {
    Layer,
    Global,
    Row,
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adamw,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Cosine,
    Step,
    Constant,
}

/// Gives SIGPIPE back its default action, so that a reader closing the pipe early (`prunekit info
/// MODEL | head -1`) ends the process quietly, as it ends every Unix tool, on stdout and stderr
/// alike (progress bars included). Rust starts programs with SIGPIPE ignored, which turns the closed
/// pipe into an EPIPE error on every write, and `println!` panics on it (exit 101).
#[cfg(unix)]
fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler; it runs first in main, before any
    // thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    default_sigpipe();
    let cli = Cli::parse();
    commands::set_arch(cli.arch);
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
