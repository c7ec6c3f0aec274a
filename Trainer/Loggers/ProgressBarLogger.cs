using System.Globalization;
using ComposerSharp.Events;
using Spectre.Console;

namespace ComposerSharp.Training.Loggers;

/// <summary>
/// A Spectre.Console progress bar for training (Composer's <c>ProgressBarLogger</c>): one bar over the max
/// duration (in batches for <c>ep</c>/<c>ba</c> budgets, else in samples or tokens) whose description shows the
/// epoch, the latest <c>loss/train/total</c> and, after an evaluation, its metrics. It draws on stderr from a
/// background thread between FitStart and FitEnd and turns itself off when stderr is redirected (logs, CI, tests),
/// so it never writes control sequences into files.
/// </summary>
public sealed class ProgressBarLogger : LoggerDestination
{
    private readonly IAnsiConsole? _console;
    private readonly object _gate = new();
    private Task? _renderer;
    private CancellationTokenSource? _stop;
    private double _value;
    private double _maxValue = 1;
    private string _description = "train";
    private string _lastLoss = string.Empty;
    private string _lastEval = string.Empty;

    /// <summary>Creates the bar.</summary>
    /// <param name="console">Where to draw; a console on stderr when null.</param>
    /// <param name="enabled">Force the bar on or off; when null it is on only if no console was given and stderr is not redirected, or if a console was given.</param>
    public ProgressBarLogger(IAnsiConsole? console = null, bool? enabled = null)
    {
        Enabled = enabled ?? (console is not null || !Console.IsErrorRedirected);
        if (Enabled)
        {
            _console = console ?? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        }
    }

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
        if (!Enabled)
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
    public override void BatchEnd(State state, Logger logger) => Update(state);

    /// <inheritdoc/>
    public override void EpochEnd(State state, Logger logger) => Update(state);

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger) => Update(state);

    /// <inheritdoc/>
    public override void FitEnd(State state, Logger logger)
    {
        Update(state);
        StopRenderer();
    }

    /// <inheritdoc/>
    public override void Close(State state, Logger logger) => StopRenderer();

    private void Update(State state)
    {
        if (!Enabled)
        {
            return;
        }

        lock (_gate)
        {
            (_value, _maxValue) = Progress(state);
            _description = Describe(state);
        }
    }

    private string Describe(State state)
    {
        long epoch = state.Timestamp.Epoch + 1;
        string epochs = state.MaxDuration is { Unit: TimeUnit.Epoch } max
            ? string.Create(CultureInfo.InvariantCulture, $"epoch {Math.Min(epoch, (long)max.Value)}/{max.Value}")
            : string.Create(CultureInfo.InvariantCulture, $"epoch {epoch}");
        return string.Join(" ", new[] { "train", epochs, _lastLoss, _lastEval }.Where(s => s.Length > 0));
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
