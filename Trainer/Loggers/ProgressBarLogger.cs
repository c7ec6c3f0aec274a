using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using Spectre.Console;

namespace ComposerSharp.Training.Loggers;

/// <summary>
/// Progress of training and evaluation (Composer's <c>ProgressBarLogger</c>). On a terminal: a Spectre.Console bar
/// over the max duration (in batches for <c>ep</c>/<c>ba</c> budgets, else in samples or tokens) whose description
/// shows the epoch, the latest <c>loss/train/total</c> and, after an evaluation, its metrics, cut to fit the
/// terminal's width; during an evaluation it shows that pass's batches. It draws on stderr from a background thread
/// between FitStart and FitEnd and turns itself off when stderr is redirected, so it never writes control sequences
/// into files. When standard output is not a terminal (a log file, a scheduler), it also writes a plain line there
/// at most every <see cref="PlainInterval"/> (and at the end of each evaluation and of training), so logs show progress.
/// </summary>
public sealed class ProgressBarLogger : LoggerDestination, IDisposable
{
    private readonly IAnsiConsole? _console;
    private readonly TextWriter? _plain;
    private readonly object _gate = new();
    private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
    private TimeSpan? _lastPlainLine;
    private Task? _renderer;
    private CancellationTokenSource? _stop;
    private double _value;
    private double _maxValue = 1;
    private string _description = "train";
    private string _lastLoss = string.Empty;
    private string _lastEval = string.Empty;
    private string? _evalProgress;

    /// <summary>Creates the bar.</summary>
    /// <param name="console">Where to draw; a console on stderr when null.</param>
    /// <param name="enabled">Force the bar on or off; when null it is on only if no console was given and stderr is not redirected, or if a console was given.</param>
    /// <param name="plainOutput">Where plain progress lines go; when null, standard output if it is redirected (else none).</param>
    /// <param name="plainInterval">Least time between two plain lines; 30 seconds by default.</param>
    public ProgressBarLogger(IAnsiConsole? console = null, bool? enabled = null, TextWriter? plainOutput = null, TimeSpan? plainInterval = null)
    {
        Enabled = enabled ?? (console is not null || !Console.IsErrorRedirected);
        if (Enabled)
        {
            _console = console ?? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        }

        _plain = plainOutput ?? (console is null && enabled is null && Console.IsOutputRedirected ? Console.Out : null);
        PlainInterval = plainInterval ?? TimeSpan.FromSeconds(30);
    }

    /// <summary>Whether plain progress lines are written (see the type's summary).</summary>
    public bool WritesPlainLines => _plain is not null;

    /// <summary>Least time between two plain progress lines.</summary>
    public TimeSpan PlainInterval { get; }

    /// <summary>Whether the bar draws anything.</summary>
    public bool Enabled { get; }

    /// <summary>The bar's current value (batches, samples or tokens done) as last updated.</summary>
    public double Value
    {
        get
        {
            lock (_gate)
            {
                return _value;
            }
        }
    }

    /// <inheritdoc/>
    public override void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        if (!Enabled && _plain is null)
        {
            return;
        }

        lock (_gate)
        {
            if (metrics.TryGetValue("loss/train/total", out double loss))
            {
                _lastLoss = string.Create(CultureInfo.InvariantCulture, $"loss {loss:F4}");
            }

            string[] eval = metrics.Where(kv => kv.Key.StartsWith("metrics/", StringComparison.Ordinal) && !kv.Key.StartsWith("metrics/train/", StringComparison.Ordinal))
                .Select(kv => string.Create(CultureInfo.InvariantCulture, $"{kv.Key["metrics/".Length..]} {kv.Value:G4}"))
                .ToArray();
            if (eval.Length > 0)
            {
                _lastEval = string.Join(" ", eval);
            }
        }
    }

    /// <inheritdoc/>
    public override void FitStart(State state, Logger logger)
    {
        if (!Enabled || _renderer is not null)
        {
            return;
        }

        lock (_gate)
        {
            (_value, _maxValue) = Progress(state);
            _description = Describe(state);
        }

        _stop = new CancellationTokenSource();
        CancellationToken token = _stop.Token;
        IAnsiConsole console = _console!;
        _renderer = Task.Run(() => console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                ProgressTask task = ctx.AddTask("train");
                while (true)
                {
                    bool stopping = token.IsCancellationRequested;
                    lock (_gate)
                    {
                        task.MaxValue = _maxValue;
                        task.Value = _value;
                        task.Description = Markup.Escape(_description);
                    }

                    ctx.Refresh();
                    if (stopping)
                    {
                        break;
                    }

                    token.WaitHandle.WaitOne(TimeSpan.FromMilliseconds(200));
                }

                task.StopTask();
            }));
    }

    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger)
    {
        Update(state);
        WritePlain(state, force: false);
    }

    /// <inheritdoc/>
    public override void EpochEnd(State state, Logger logger) => Update(state);

    /// <inheritdoc/>
    public override void EvalStart(State state, Logger logger) => UpdateEval(state);

    /// <inheritdoc/>
    public override void EvalBatchEnd(State state, Logger logger)
    {
        UpdateEval(state);
        WritePlain(state, force: false);
    }

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger)
    {
        lock (_gate)
        {
            _evalProgress = null;
        }

        Update(state);
        WritePlain(state, force: true, what: $"{state.DataloaderLabel ?? "eval"} done");
    }

    /// <inheritdoc/>
    public override void FitEnd(State state, Logger logger)
    {
        Update(state);
        WritePlain(state, force: true, what: "training done");
        StopRenderer();
    }

    /// <inheritdoc/>
    public override void Close(State state, Logger logger) => StopRenderer();

    private void Update(State state)
    {
        if (!Enabled && _plain is null)
        {
            return;
        }

        lock (_gate)
        {
            (_value, _maxValue) = Progress(state);
            _description = Describe(state);
        }
    }

    private void UpdateEval(State state)
    {
        if (!Enabled && _plain is null)
        {
            return;
        }

        long done = state.EvalTimestamp.Batch;
        long? total = state.DataloaderLength;
        lock (_gate)
        {
            _evalProgress = string.Create(CultureInfo.InvariantCulture, $"{state.DataloaderLabel ?? "eval"} batch {done}{(total is { } t ? "/" + t : string.Empty)}");
            _description = Describe(state);
        }
    }

    /// <summary>Writes a plain progress line when plain lines are on and the interval has passed (or <paramref name="force"/>).</summary>
    private void WritePlain(State state, bool force, string? what = null)
    {
        if (_plain is null)
        {
            return;
        }

        TimeSpan now = _clock.Elapsed;
        if (!force && _lastPlainLine is { } last && now - last < PlainInterval)
        {
            return;
        }

        _lastPlainLine = now;
        (double value, double max) = Progress(state);
        string line;
        lock (_gate)
        {
            line = string.Create(CultureInfo.InvariantCulture, $"[progress] {Describe(state)} | {value:0}/{max:0} ({100 * value / max:0.0}%) | elapsed {now:hh\\:mm\\:ss}{(what is null ? string.Empty : " | " + what)}");
        }

        _plain.WriteLine(line);
        _plain.Flush();
    }

    private string Describe(State state)
    {
        long epoch = state.Timestamp.Epoch + 1;
        string epochs = state.MaxDuration is { Unit: TimeUnit.Epoch } max
            ? string.Create(CultureInfo.InvariantCulture, $"epoch {Math.Min(epoch, (long)max.Value)}/{max.Value}")
            : string.Create(CultureInfo.InvariantCulture, $"epoch {epoch}");
        string text = string.Join(" ", new[] { "train", epochs, _lastLoss, _evalProgress ?? _lastEval }.Where(s => s.Length > 0));

        // The bar's other columns (bar, percentage, elapsed, remaining) take about 50 columns; keep the description
        // on one line so the bar does not wrap over several on every refresh.
        int width = _console?.Profile.Width ?? int.MaxValue;
        int room = Math.Max(24, width - 52);
        return text.Length <= room ? text : text[..(room - 1)] + "…";
    }

    private static (double Value, double Max) Progress(State state)
    {
        Timestamp ts = state.Timestamp;
        if (state.MaxDuration is not { } max)
        {
            return (ts.Batch, Math.Max(1, ts.Batch));
        }

        if (max.Unit == TimeUnit.Epoch)
        {
            long perEpoch = state.TrainDataloader?.BatchesPerEpoch ?? 0;
            return perEpoch > 0 ? (ts.Batch, Math.Max(1, max.Value * perEpoch)) : (ts.Epoch, Math.Max(1, max.Value));
        }

        return (ts.Get(max.Unit).Value, Math.Max(1, max.Value));
    }

    /// <summary>Stops the renderer thread if it runs (as <see cref="Close"/> does); idempotent.</summary>
    public void Dispose() => StopRenderer();

    private void StopRenderer()
    {
        if (_renderer is null)
        {
            return;
        }

        _stop!.Cancel();
        _renderer.Wait();
        _renderer = null;
        _stop.Dispose();
        _stop = null;
    }
}
