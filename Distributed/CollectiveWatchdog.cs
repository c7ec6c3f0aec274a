using System.Diagnostics;

namespace ComposerSharp.Distributed;

/// <summary>
/// Ends the job when one collective has been waiting longer than the timeout (Composer's <c>dist_timeout</c>):
/// blocking collectives never return when a peer has died or stopped calling them, so a background thread watches
/// the collective in progress and calls <c>onTimeout</c> (which aborts the whole job) with a message naming it.
/// </summary>
internal sealed class CollectiveWatchdog : IDisposable
{
    private readonly TimeSpan _timeout;
    private readonly Action<string> _onTimeout;
    private readonly Thread _thread;
    private readonly object _gate = new();
    private string? _current;
    private long _startedAt;
    private bool _stopped;

    public CollectiveWatchdog(TimeSpan timeout, Action<string> onTimeout)
    {
        if (timeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(timeout), timeout, "The distributed timeout must be positive.");
        }

        _timeout = timeout;
        _onTimeout = onTimeout;
        _thread = new Thread(Watch) { IsBackground = true, Name = "collective-watchdog" };
        _thread.Start();
    }

    /// <summary>Marks <paramref name="description"/> as in progress until the returned scope is disposed.</summary>
    public Scope Enter(string description)
    {
        lock (_gate)
        {
            _current = description;
            _startedAt = Stopwatch.GetTimestamp();
        }

        return new Scope(this);
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _stopped = true;
            Monitor.PulseAll(_gate);
        }

        _thread.Join();
    }

    private void Leave()
    {
        lock (_gate)
        {
            _current = null;
        }
    }

    private void Watch()
    {
        TimeSpan poll = TimeSpan.FromMilliseconds(Math.Clamp(_timeout.TotalMilliseconds / 10, 10, 1000));
        while (true)
        {
            string? expired = null;
            lock (_gate)
            {
                if (_stopped)
                {
                    return;
                }

                Monitor.Wait(_gate, poll);
                if (_stopped)
                {
                    return;
                }

                if (_current is not null && Stopwatch.GetElapsedTime(_startedAt) > _timeout)
                {
                    expired = _current;
                    _current = null;
                }
            }

            if (expired is not null)
            {
                _onTimeout($"{expired} did not complete within the distributed timeout of {_timeout.TotalSeconds:0.###} s (dist_timeout); a rank has probably failed or stopped calling collectives.");
            }
        }
    }

    /// <summary>The collective's lifetime.</summary>
    public readonly struct Scope : IDisposable
    {
        private readonly CollectiveWatchdog _owner;

        internal Scope(CollectiveWatchdog owner) => _owner = owner;

        /// <summary>The collective finished.</summary>
        public void Dispose() => _owner?.Leave();
    }
}
