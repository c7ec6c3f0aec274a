using System.Runtime.InteropServices;
using ComposerSharp.Core;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Training;

/// <summary>
/// Turns the first SIGINT (Ctrl-C) or SIGTERM (what a cluster scheduler sends before preemption) into a graceful
/// stop request, and lets a second one, sent at least <see cref="DuplicateWindow"/> later, end the process at once. Pass <see cref="Token"/> to
/// <see cref="Trainer.Fit(ComposerSharp.Core.Time?, CancellationToken)"/>: the batch in progress finishes, a checkpoint is saved
/// when a save folder is set, and Fit returns; the caller then writes what it reports and exits with
/// <see cref="ExitCode"/>. The idea follows Hugging Face Trainer's checkpoint-on-SIGTERM and PyTorch Lightning's
/// signal connector; Composer has no equivalent yet (composer issue #2461).
/// <code>
/// using var stop = new GracefulStop(logger);
/// trainer.Fit(cancellationToken: stop.Token);
/// return stop.ExitCode; // 0, or 130 after SIGINT, 143 after SIGTERM
/// </code>
/// </summary>
/// <remarks>
/// The handlers are registered with .NET's <see cref="PosixSignalRegistration"/> for the lifetime of the instance
/// (dispose it to restore the default handling). They run on a thread-pool thread and only cancel a token, which
/// the training thread reads at batch and evaluation-batch boundaries.
/// </remarks>
public sealed class GracefulStop : IDisposable
{
    private readonly CancellationTokenSource _source = new();
    private readonly ILogger? _logger;
    private readonly PosixSignalRegistration[] _registrations;
    private int _signals;

    /// <summary>Registers the handlers for SIGINT and SIGTERM.</summary>
    /// <param name="logger">Receives one warning line per signal, saying what happens next.</param>
    public GracefulStop(ILogger? logger = null)
    {
        _logger = logger;
        _registrations = new[]
        {
            PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle),
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle),
        };
    }

    /// <summary>Cancelled by the first signal.</summary>
    public CancellationToken Token => _source.Token;

    /// <summary>The first signal received, or null.</summary>
    public PosixSignal? Signal { get; private set; }

    /// <summary>The conventional exit code for the first signal: 130 for SIGINT, 143 for SIGTERM (128 + number), 0 when none came.</summary>
    public int ExitCode => Signal switch
    {
        PosixSignal.SIGINT => 130,
        PosixSignal.SIGTERM => 143,
        null => 0,
        _ => 1,
    };

    /// <summary>The signal's usual name (<c>SIGINT</c>, <c>SIGTERM</c>), or null when none came.</summary>
    public string? SignalName => Signal?.ToString();

    /// <summary>Unregisters the handlers; later signals get the default handling.</summary>
    public void Dispose()
    {
        foreach (PosixSignalRegistration registration in _registrations)
        {
            registration.Dispose();
        }

        _source.Dispose();
    }

    /// <summary>
    /// A second signal this soon after the first counts as the same request, not as "abort now": launchers such as
    /// <c>dotnet run</c> forward a signal to the program while <c>timeout</c>, a shell or a scheduler also signals the
    /// whole process group, so one request can arrive twice within milliseconds.
    /// </summary>
    public static readonly TimeSpan DuplicateWindow = TimeSpan.FromSeconds(1);

    private long _firstSignalTicks;

    private void Handle(PosixSignalContext context)
    {
        if (Interlocked.CompareExchange(ref _signals, 0, 0) > 0 && System.Diagnostics.Stopwatch.GetElapsedTime(Interlocked.Read(ref _firstSignalTicks)) < DuplicateWindow)
        {
            context.Cancel = true;
            _logger?.LogInformation("Received {Signal} again within {Window} s of the first: taken as the same stop request (a launcher forwarding it). Send it again later to abort.", context.Signal, DuplicateWindow.TotalSeconds);
            return;
        }

        if (Interlocked.Increment(ref _signals) == 1)
        {
            Interlocked.Exchange(ref _firstSignalTicks, System.Diagnostics.Stopwatch.GetTimestamp());
            Signal = context.Signal;
            context.Cancel = true; // keep running: the stop is graceful
            _logger?.LogWarning(
                "Received {Signal}: finishing the current batch, saving a checkpoint (when a save folder is set) and stopping. Send it again to abort at once.",
                context.Signal);
            _source.Cancel();
            return;
        }

        // A second signal: the default handling, which ends the process now.
        _logger?.LogWarning("Received {Signal} again: aborting at once.", context.Signal);
        context.Cancel = false;
    }
}
