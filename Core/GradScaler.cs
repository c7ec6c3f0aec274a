using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Core;

/// <summary>
/// Dynamic loss scaling for <c>amp_fp16</c> training, with the behaviour of PyTorch's <c>torch.amp.GradScaler</c>
/// (Micikevicius et al., "Mixed Precision Training", ICLR 2018): the loss is multiplied by <see cref="Scale"/>
/// before backward so that small Float16 gradients do not flush to zero; before the optimizer step the gradients
/// are divided by the scale and checked for inf/NaN. A step with inf/NaN gradients is skipped and the scale is
/// multiplied by <see cref="BackoffFactor"/>; after <see cref="GrowthInterval"/> consecutive good steps the scale is
/// multiplied by <see cref="GrowthFactor"/>. The scale is kept as a managed double (its values are powers of two
/// times the initial scale, exact in both double and Float32), so scaling holds no native memory between steps.
/// </summary>
public sealed class GradScaler
{
    private readonly HashSet<optim.Optimizer> _unscaled = new(ReferenceEqualityComparer.Instance);
    private bool _foundInf;

    /// <summary>Creates a scaler; the defaults are PyTorch's (2^16, ×2 growth, ×0.5 backoff, 2000 steps).</summary>
    /// <param name="initScale">Initial scale (&gt; 0).</param>
    /// <param name="growthFactor">Scale multiplier after <paramref name="growthInterval"/> good steps (&gt; 1).</param>
    /// <param name="backoffFactor">Scale multiplier after a step with inf/NaN gradients (in (0, 1)).</param>
    /// <param name="growthInterval">Consecutive good steps before the scale grows (≥ 1).</param>
    /// <param name="enabled">When false every method is a pass-through (scale 1, no checks), as in PyTorch.</param>
    /// <exception cref="ArgumentOutOfRangeException">A factor or the interval is outside the range stated.</exception>
    public GradScaler(double initScale = 65536.0, double growthFactor = 2.0, double backoffFactor = 0.5, int growthInterval = 2000, bool enabled = true)
    {
        if (!(initScale > 0) || !double.IsFinite(initScale))
        {
            throw new ArgumentOutOfRangeException(nameof(initScale), initScale, "The initial loss scale must be a finite number > 0.");
        }

        if (!(growthFactor > 1) || !double.IsFinite(growthFactor))
        {
            throw new ArgumentOutOfRangeException(nameof(growthFactor), growthFactor, "The growth factor must be a finite number > 1.");
        }

        if (!(backoffFactor > 0 && backoffFactor < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(backoffFactor), backoffFactor, "The backoff factor must be in (0, 1).");
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(growthInterval, 1);
        Scale = initScale;
        GrowthFactor = growthFactor;
        BackoffFactor = backoffFactor;
        GrowthInterval = growthInterval;
        Enabled = enabled;
    }

    /// <summary>Whether scaling is on. A disabled scaler multiplies by 1 and never skips a step.</summary>
    public bool Enabled { get; }

    /// <summary>The current loss scale (dimensionless multiplier).</summary>
    public double Scale { get; private set; }

    /// <summary>Multiplier applied to the scale after <see cref="GrowthInterval"/> good steps.</summary>
    public double GrowthFactor { get; }

    /// <summary>Multiplier applied to the scale after a step with inf/NaN gradients.</summary>
    public double BackoffFactor { get; }

    /// <summary>Consecutive good steps needed before the scale grows.</summary>
    public int GrowthInterval { get; }

    /// <summary>Good steps since the last growth or backoff (PyTorch's <c>_growth_tracker</c>).</summary>
    public int GrowthTracker { get; private set; }

    /// <summary>Optimizer steps skipped because of inf/NaN gradients since this scaler was created or loaded.</summary>
    public long SkippedSteps { get; private set; }

    /// <summary>Whether the last <see cref="Unscale"/> since the previous <see cref="Update"/> found inf/NaN gradients.</summary>
    public bool FoundInf => _foundInf;

    /// <summary>The loss multiplied by <see cref="Scale"/> (a new tensor of the loss's dtype and shape); the loss itself when disabled.</summary>
    public Tensor ScaleLoss(Tensor loss)
    {
        ArgumentNullException.ThrowIfNull(loss);
        return Enabled ? loss * Scale : loss;
    }

    /// <summary>
    /// Divides the gradients of <paramref name="optimizer"/>'s parameters by <see cref="Scale"/> in place and records
    /// whether any is inf/NaN (PyTorch's <c>unscale_</c>). Once per optimizer between two <see cref="Update"/>s.
    /// Costs one device-to-host synchronisation.
    /// </summary>
    /// <exception cref="InvalidOperationException">Called twice for the same optimizer before <see cref="Update"/>.</exception>
    public void Unscale(optim.Optimizer optimizer)
    {
        ArgumentNullException.ThrowIfNull(optimizer);
        if (!Enabled)
        {
            return;
        }

        if (!_unscaled.Add(optimizer))
        {
            throw new InvalidOperationException("Unscale was already called for this optimizer since the last Update.");
        }

        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        double inverse = 1.0 / Scale;
        Tensor? nonFinite = null;
        foreach (var p in optimizer.parameters())
        {
            Tensor? grad = p.grad;
            if (grad is null)
            {
                continue;
            }

            Tensor bad = grad.isfinite().all().logical_not();
            nonFinite = nonFinite is null ? bad : nonFinite.logical_or(bad);
            grad.mul_(inverse);
        }

        if (nonFinite is not null && nonFinite.item<bool>())
        {
            _foundInf = true;
        }
    }

    /// <summary>
    /// Unscales if needed, then runs <paramref name="optimizer"/>'s step unless inf/NaN gradients were found, in
    /// which case the step is skipped (the parameters and optimizer state do not change).
    /// </summary>
    /// <returns>True when the optimizer stepped.</returns>
    public bool Step(optim.Optimizer optimizer)
    {
        ArgumentNullException.ThrowIfNull(optimizer);
        if (!Enabled)
        {
            optimizer.step();
            return true;
        }

        if (!_unscaled.Contains(optimizer))
        {
            Unscale(optimizer);
        }

        if (_foundInf)
        {
            return false;
        }

        optimizer.step();
        return true;
    }

    /// <summary>
    /// Records inf/NaN gradients found elsewhere (on another rank, after an any-rank reduction of <see cref="FoundInf"/>),
    /// so that this step is skipped and the scale backed off too; a no-op when the scaler is disabled. Public because
    /// the scaler lives in Events (<see cref="State.Scaler"/>) and the data-parallel training loop calls it.
    /// </summary>
    public void MarkFoundInf()
    {
        if (Enabled)
        {
            _foundInf = true;
        }
    }

    /// <summary>
    /// Adjusts the scale after a batch: back off if inf/NaN gradients were found (and count a skipped step), else
    /// count a good step and grow after <see cref="GrowthInterval"/> of them. Call once per batch after the steps.
    /// </summary>
    public void Update()
    {
        if (!Enabled)
        {
            return;
        }

        if (_foundInf)
        {
            Scale *= BackoffFactor;
            GrowthTracker = 0;
            SkippedSteps++;
        }
        else if (++GrowthTracker >= GrowthInterval)
        {
            Scale *= GrowthFactor;
            GrowthTracker = 0;
        }

        _foundInf = false;
        _unscaled.Clear();
    }

    /// <summary>The scaler's state for a checkpoint: scale, growth tracker, skipped steps and settings (invariant strings).</summary>
    public IReadOnlyDictionary<string, string> StateDict() => new Dictionary<string, string>
    {
        ["scale"] = Scale.ToString("R", CultureInfo.InvariantCulture),
        ["growth_tracker"] = GrowthTracker.ToString(CultureInfo.InvariantCulture),
        ["skipped_steps"] = SkippedSteps.ToString(CultureInfo.InvariantCulture),
        ["growth_factor"] = GrowthFactor.ToString("R", CultureInfo.InvariantCulture),
        ["backoff_factor"] = BackoffFactor.ToString("R", CultureInfo.InvariantCulture),
        ["growth_interval"] = GrowthInterval.ToString(CultureInfo.InvariantCulture),
        ["enabled"] = Enabled ? "true" : "false",
    };

    /// <summary>Restores the scale, growth tracker and skipped-step count written by <see cref="StateDict"/>.</summary>
    /// <exception cref="ArgumentException">A value is missing or not a number; the message names it.</exception>
    public void LoadStateDict(IReadOnlyDictionary<string, string> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        Scale = Read(state, "scale", s => double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture));
        GrowthTracker = Read(state, "growth_tracker", s => int.Parse(s, CultureInfo.InvariantCulture));
        SkippedSteps = Read(state, "skipped_steps", s => long.Parse(s, CultureInfo.InvariantCulture));
        _foundInf = false;
        _unscaled.Clear();
    }

    private static T Read<T>(IReadOnlyDictionary<string, string> state, string key, Func<string, T> parse)
    {
        if (!state.TryGetValue(key, out string? text))
        {
            throw new ArgumentException($"The gradient scaler state has no '{key}' entry.", nameof(state));
        }

        try
        {
            return parse(text);
        }
        catch (FormatException ex)
        {
            throw new ArgumentException($"The gradient scaler state entry '{key}' = '{text}' is not a number.", nameof(state), ex);
        }
    }
}
