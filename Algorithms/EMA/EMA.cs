using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Composer's EMA: keeps an exponential moving average of the model's weights, W_ema ← s·W_ema + (1 − s)·W, updated
/// every <see cref="UpdateInterval"/> once <see cref="EmaStart"/> is reached; evaluation runs on the averaged weights
/// (swapped in at EvalStart and out at EvalEnd) and training continues on the live weights. The averaged weights and
/// flags are checkpoint state (<see cref="IStatefulAlgorithm"/>), so a resumed run continues bitwise exactly.
/// Method card: Algorithms/EMA/README.md. Source: Composer's composer/algorithms/ema; the averaging of weights from
/// Polyak and Juditsky (1992), the EMA form as used by Tan and Le (EfficientNet, 2019) and Kaddour et al. (2022).
/// </summary>
/// <remarks>
/// Averaged: every parameter with <c>requires_grad</c> when averaging starts and every buffer (floating buffers are
/// averaged, integer ones copied). The model in a checkpoint holds the live training weights (Composer swaps the
/// averaged ones in before saving); <see cref="CopyEmaWeightsTo"/> puts the averaged weights into a model, e.g. to
/// export them. Holds one extra copy of the averaged tensors, plus a scratch copy while swapping.
/// </remarks>
public sealed class EMA : Algorithm, IStatefulAlgorithm, IDisposable
{
    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter holding the half-life (empty when given by smoothing).</summary>
    public const string HalfLifeKey = "half_life";

    /// <summary>The hyperparameter holding the smoothing when given directly (empty otherwise).</summary>
    public const string SmoothingKey = "smoothing";

    /// <summary>The hyperparameter holding <see cref="EmaStart"/>.</summary>
    public const string EmaStartKey = "ema_start";

    /// <summary>The hyperparameter holding <see cref="UpdateInterval"/>.</summary>
    public const string UpdateIntervalKey = "update_interval";

    private const string ParameterPrefix = "parameters.";
    private const string BufferPrefix = "buffers.";

    private readonly Dictionary<string, Tensor> _parameters = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Tensor> _buffers = new(StringComparer.Ordinal);
    private readonly Time? _halfLife;
    private readonly double? _givenSmoothing;
    private bool _onDevice;

    /// <summary>Creates the algorithm (Composer's <c>EMA(half_life, smoothing, ema_start, update_interval)</c>).</summary>
    /// <param name="halfLife">
    /// Time string of the half-life of a term in the average, in <c>ba</c> or <c>ep</c> and an integer, e.g. <c>1000ba</c>.
    /// Exclusive with <paramref name="smoothing"/>; when both are null it is Composer's default <c>1000ba</c>.
    /// </param>
    /// <param name="smoothing">The factor s in (0, 1) kept of the old average at each update; not adjusted to <paramref name="updateInterval"/>.</param>
    /// <param name="emaStart">Training done before averaging starts, in <c>dur</c>, <c>ba</c> or <c>ep</c> (default <c>0.0dur</c>).</param>
    /// <param name="updateInterval">
    /// Time string of the period of updates, <c>ba</c> or <c>ep</c>, integer; the unit must be the half-life's. Default:
    /// 1 in the half-life's unit, or <c>1ba</c> with <paramref name="smoothing"/>.
    /// </param>
    /// <exception cref="ArgumentException">
    /// Both <paramref name="halfLife"/> and <paramref name="smoothing"/>; a time that does not parse; a unit other than
    /// those listed; a non-integer or non-positive half-life or interval; units of the half-life and interval that differ;
    /// a smoothing outside (0, 1); a negative start.
    /// </exception>
    public EMA(string? halfLife = null, double? smoothing = null, string emaStart = "0.0dur", string? updateInterval = null)
    {
        if (halfLife is not null && smoothing is not null)
        {
            throw new ArgumentException($"Give either half_life ('{halfLife}') or smoothing ({smoothing.Value.ToString("R", CultureInfo.InvariantCulture)}), not both.", nameof(smoothing));
        }

        if (smoothing is { } s && !(s > 0 && s < 1))
        {
            throw new ArgumentException($"smoothing must be in the open interval (0, 1), not {s.ToString("R", CultureInfo.InvariantCulture)}.", nameof(smoothing));
        }

        _givenSmoothing = smoothing;
        _halfLife = smoothing is null ? ParseCount(halfLife ?? "1000ba", nameof(halfLife), "half_life") : (Time?)null;
        EmaStart = ParseTime(emaStart, nameof(emaStart));
        if (EmaStart.Unit is not (TimeUnit.Duration or TimeUnit.Batch or TimeUnit.Epoch) || EmaStart.Value < 0)
        {
            throw new ArgumentException($"ema_start must be a non-negative time in dur, ba or ep, not '{emaStart}'.", nameof(emaStart));
        }

        UpdateInterval = updateInterval is null
            ? new Time(1, _halfLife?.Unit ?? TimeUnit.Batch)
            : ParseCount(updateInterval, nameof(updateInterval), "update_interval");
        if (_halfLife is { } hl && hl.Unit != UpdateInterval.Unit)
        {
            throw new ArgumentException($"The units of half_life ({hl}) and update_interval ({UpdateInterval}) must match.", nameof(updateInterval));
        }

        Smoothing = smoothing ?? Math.Pow(2, -(UpdateInterval.Value / _halfLife!.Value.Value));
    }

    /// <summary>The half-life of a term in the average, or null when <see cref="Smoothing"/> was given.</summary>
    public Time? HalfLife => _halfLife;

    /// <summary>s: the weight kept of the old average at each update; 2^(−interval / half-life) when a half-life is given.</summary>
    public double Smoothing { get; }

    /// <summary>When averaging starts (<c>dur</c>, <c>ba</c> or <c>ep</c>).</summary>
    public Time EmaStart { get; }

    /// <summary>The period of updates (<c>ba</c>: at BatchEnd; <c>ep</c>: at EpochEnd).</summary>
    public Time UpdateInterval { get; }

    /// <summary>Whether averaging has started (the averaged weights exist).</summary>
    public bool EmaStarted { get; private set; }

    /// <summary>Whether the model holds the averaged weights now (between EvalStart and EvalEnd).</summary>
    public bool EmaWeightsActive { get; private set; }

    /// <summary><c>ema</c>.</summary>
    public override string Name => "ema";

    private Event UpdateEvent => UpdateInterval.Unit == TimeUnit.Epoch ? Event.EpochEnd : Event.BatchEnd;

    /// <summary>
    /// True at the update event (BatchEnd or EpochEnd) once the start is reached, at EvalStart, EvalEnd and
    /// BatchStart once started (to swap weights), and never before the start.
    /// </summary>
    public override bool Match(Event e, State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (e == UpdateEvent)
        {
            return EmaStarted || ShouldStart(state);
        }

        return EmaStarted && e is Event.EvalStart or Event.EvalEnd or Event.BatchStart;
    }

    /// <summary>
    /// At the update event: starts averaging (copies the weights) when due, then averages when the count in the
    /// interval's unit is a multiple of the interval. At EvalStart swaps the averaged weights in; at EvalEnd (and, as a
    /// safeguard, BatchStart) swaps the training weights back. Returns null.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="state"/> is null.</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        if (e == UpdateEvent)
        {
            if (!EmaStarted)
            {
                Start(state.Model);
            }

            double count = state.Timestamp.Get(UpdateInterval.Unit).Value;
            if (count % UpdateInterval.Value == 0)
            {
                MoveToModelDevice(state.Model);
                ComputeEma(state.Model, _parameters, _buffers, Smoothing);
            }
        }
        else if (e == Event.EvalStart && !EmaWeightsActive)
        {
            Swap(state.Model);
            EmaWeightsActive = true;
        }
        else if (e is Event.EvalEnd or Event.BatchStart && EmaWeightsActive)
        {
            Swap(state.Model);
            EmaWeightsActive = false;
        }

        return null;
    }

    /// <summary>Copies the averaged weights into <paramref name="model"/>'s parameters and buffers of the same names (Composer's <c>get_ema_model</c>).</summary>
    /// <exception cref="InvalidOperationException">Averaging has not started, or the model holds the averaged weights already (during evaluation).</exception>
    public void CopyEmaWeightsTo(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!EmaStarted)
        {
            throw new InvalidOperationException($"EMA has not started (ema_start {EmaStart}); there are no averaged weights yet.");
        }

        if (EmaWeightsActive)
        {
            throw new InvalidOperationException("The averaged weights are in the model now (during evaluation), and the held copy is the training weights.");
        }

        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach ((string name, Tensor p) in model.named_parameters())
        {
            if (_parameters.TryGetValue(name, out Tensor? ema))
            {
                p.copy_(ema);
            }
        }

        foreach ((string name, Tensor b) in model.named_buffers())
        {
            if (_buffers.TryGetValue(name, out Tensor? ema))
            {
                b.copy_(ema);
            }
        }
    }

    /// <summary>
    /// The functional form (Composer's <c>compute_ema</c>): W_ema ← s·W_ema + (1 − s)·W in place, for every entry of
    /// <paramref name="emaParameters"/> and <paramref name="emaBuffers"/> whose name is a parameter or buffer of
    /// <paramref name="model"/>; integer buffers are copied. The computation is in each averaged tensor's dtype.
    /// </summary>
    /// <param name="model">The model with the latest weights.</param>
    /// <param name="emaParameters">Averaged parameters by name (same shapes as the model's), changed in place.</param>
    /// <param name="emaBuffers">Averaged buffers by name, changed in place.</param>
    /// <param name="smoothing">s in [0, 1]: 0 copies the model, 1 leaves the average unchanged.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="smoothing"/> outside [0, 1].</exception>
    public static void ComputeEma(nn.Module model, IReadOnlyDictionary<string, Tensor> emaParameters, IReadOnlyDictionary<string, Tensor> emaBuffers, double smoothing)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(emaParameters);
        ArgumentNullException.ThrowIfNull(emaBuffers);
        if (!(smoothing >= 0 && smoothing <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(smoothing), smoothing, "smoothing must be in [0, 1].");
        }

        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach ((string name, Tensor p) in model.named_parameters())
        {
            if (emaParameters.TryGetValue(name, out Tensor? ema))
            {
                Average(ema, p, smoothing);
            }
        }

        foreach ((string name, Tensor b) in model.named_buffers())
        {
            if (emaBuffers.TryGetValue(name, out Tensor? ema))
            {
                Average(ema, b, smoothing);
            }
        }
    }

    /// <summary>
    /// <c>ema_started</c>, <c>ema_weights_active</c> and the averaged tensors (<c>parameters.NAME</c>,
    /// <c>buffers.NAME</c>; while the averaged weights are active these hold the training weights, as in Composer).
    /// </summary>
    public AlgorithmState StateDict()
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach ((string name, Tensor t) in _parameters)
        {
            tensors[ParameterPrefix + name] = t;
        }

        foreach ((string name, Tensor t) in _buffers)
        {
            tensors[BufferPrefix + name] = t;
        }

        return new AlgorithmState(
            new Dictionary<string, object?> { ["ema_started"] = EmaStarted, ["ema_weights_active"] = EmaWeightsActive },
            tensors);
    }

    /// <summary>Restores what <see cref="StateDict"/> wrote; the tensors are copied (to the CPU; moved to the model's device at the first use).</summary>
    /// <param name="saved">The saved state.</param>
    /// <param name="state">The run's state (unused: the averaged tensors move to the model's device when first used).</param>
    /// <exception cref="ArgumentException">A value is missing or not a bool, or a tensor name has neither prefix.</exception>
    public void LoadStateDict(AlgorithmState saved, State state)
    {
        ArgumentNullException.ThrowIfNull(saved);
        bool started = ReadBool(saved, "ema_started");
        bool active = ReadBool(saved, "ema_weights_active");
        ClearTensors();
        foreach ((string name, Tensor t) in saved.Tensors)
        {
            Tensor copy = t.detach().clone().DetachFromDisposeScope();
            if (name.StartsWith(ParameterPrefix, StringComparison.Ordinal))
            {
                _parameters[name[ParameterPrefix.Length..]] = copy;
            }
            else if (name.StartsWith(BufferPrefix, StringComparison.Ordinal))
            {
                _buffers[name[BufferPrefix.Length..]] = copy;
            }
            else
            {
                copy.Dispose();
                throw new ArgumentException($"EMA state tensor '{name}' is neither '{ParameterPrefix}NAME' nor '{BufferPrefix}NAME'.", nameof(saved));
            }
        }

        if (started && _parameters.Count == 0 && _buffers.Count == 0)
        {
            throw new ArgumentException("The EMA state says averaging started but holds no averaged tensors.", nameof(saved));
        }

        EmaStarted = started;
        EmaWeightsActive = active;
        _onDevice = false;
    }

    /// <summary>
    /// <c>half_life</c> or <c>smoothing</c> (the other empty), <c>ema_start</c> and <c>update_interval</c>, as
    /// invariant strings.
    /// </summary>
    public override AlgorithmDescription Describe() => new(Name, new Dictionary<string, string>
    {
        [HalfLifeKey] = _halfLife?.ToString() ?? string.Empty,
        [SmoothingKey] = _givenSmoothing?.ToString("R", CultureInfo.InvariantCulture) ?? string.Empty,
        [EmaStartKey] = EmaStart.ToString(),
        [UpdateIntervalKey] = UpdateInterval.ToString(),
    });

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"ema(smoothing={Smoothing:R}, ema_start={EmaStart}, update_interval={UpdateInterval})");

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Another algorithm's description, an unknown key, or an invalid value (see the constructor).</exception>
    public static EMA FromDescription(AlgorithmDescription description)
    {
        var reader = new HyperparameterReader(description, "ema", HalfLifeKey, SmoothingKey, EmaStartKey, UpdateIntervalKey);
        string? halfLife = reader.String(HalfLifeKey);
        string? interval = reader.String(UpdateIntervalKey);
        return new EMA(
            string.IsNullOrEmpty(halfLife) ? null : halfLife,
            reader.NullableDouble(SmoothingKey),
            reader.String(EmaStartKey) is { Length: > 0 } start ? start : "0.0dur",
            string.IsNullOrEmpty(interval) ? null : interval);
    }

    /// <summary>Frees the averaged tensors.</summary>
    public void Dispose() => ClearTensors();

    private bool ShouldStart(State state)
    {
        if (EmaStart.Unit == TimeUnit.Duration)
        {
            return state.ElapsedDuration is { } elapsed && EmaStart.Value <= elapsed.Value;
        }

        return EmaStart.Value <= state.Timestamp.Get(EmaStart.Unit).Value;
    }

    private void Start(nn.Module model)
    {
        ClearTensors();
        foreach ((string name, Tensor p) in model.named_parameters())
        {
            if (p.requires_grad)
            {
                _parameters[name] = p.detach().clone().DetachFromDisposeScope();
            }
        }

        foreach ((string name, Tensor b) in model.named_buffers())
        {
            _buffers[name] = b.detach().clone().DetachFromDisposeScope();
        }

        EmaStarted = true;
        _onDevice = true;
    }

    /// <summary>Exchanges the model's values with the held ones (training ↔ averaged), by copies through a scratch tensor.</summary>
    private void Swap(nn.Module model)
    {
        MoveToModelDevice(model);
        foreach ((string name, Tensor p) in model.named_parameters())
        {
            if (_parameters.TryGetValue(name, out Tensor? held))
            {
                Tensor scratch = p.detach().clone();
                p.copy_(held);
                held.copy_(scratch);
            }
        }

        foreach ((string name, Tensor b) in model.named_buffers())
        {
            if (_buffers.TryGetValue(name, out Tensor? held))
            {
                Tensor scratch = b.detach().clone();
                b.copy_(held);
                held.copy_(scratch);
            }
        }
    }

    /// <summary>After a load the held tensors are on the CPU; the first use moves them next to the model's (Composer's <c>move_params_to_device</c>).</summary>
    private void MoveToModelDevice(nn.Module model)
    {
        if (_onDevice)
        {
            return;
        }

        Move(_parameters, model.named_parameters().ToDictionary(x => x.name, x => (Tensor)x.parameter));
        Move(_buffers, model.named_buffers().ToDictionary(x => x.name, x => x.buffer));
        _onDevice = true;

        static void Move(Dictionary<string, Tensor> held, Dictionary<string, Tensor> target)
        {
            foreach (string name in held.Keys.ToList())
            {
                if (target.TryGetValue(name, out Tensor? t) && held[name].device != t.device)
                {
                    Tensor moved = held[name].to(t.device).DetachFromDisposeScope();
                    held[name].Dispose();
                    held[name] = moved;
                }
            }
        }
    }

    private static void Average(Tensor ema, Tensor current, double smoothing)
    {
        if (ema.is_floating_point())
        {
            // s·W_ema + (1 − s)·W, as Composer writes it (not lerp, whose rounding differs).
            ema.copy_(ema * smoothing + current.detach() * (1.0 - smoothing));
        }
        else
        {
            ema.copy_(current);
        }
    }

    private void ClearTensors()
    {
        foreach (Tensor t in _parameters.Values.Concat(_buffers.Values))
        {
            t.Dispose();
        }

        _parameters.Clear();
        _buffers.Clear();
    }

    private static bool ReadBool(AlgorithmState saved, string key) =>
        saved.Values.TryGetValue(key, out object? v) && v is bool b
            ? b
            : throw new ArgumentException($"The EMA state has no boolean '{key}' (got {v ?? "nothing"}).", nameof(saved));

    private static Time ParseTime(string text, string parameter) =>
        Time.TryParse(text, out Time t) ? t : throw new ArgumentException($"'{text}' is not a time string such as 1000ba, 1ep or 0.5dur.", parameter);

    private static Time ParseCount(string text, string parameter, string option)
    {
        Time t = ParseTime(text, parameter);
        if (t.Unit is not (TimeUnit.Batch or TimeUnit.Epoch) || t.Value < 1 || t.Value != Math.Floor(t.Value))
        {
            throw new ArgumentException($"{option} must be a positive integer number of batches or epochs (e.g. 1000ba or 1ep), not '{text}'.", parameter);
        }

        return t;
    }
}
