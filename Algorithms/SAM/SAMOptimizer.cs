using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Sharpness-aware minimisation as an optimizer wrapper (Composer's <c>SAMOptimizer</c>, composer/algorithms/sam;
/// Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving Generalization",
/// ICLR 2021). On a SAM step the closure is evaluated at w (gradient g), the weights move to the approximate worst
/// point of the ρ-ball, w + e with e = ρ·g / (‖g‖₂ + ε) (‖g‖₂ over all parameters together), the closure is evaluated
/// again there, the weights return to w, and the base optimizer steps with the gradient taken at w + e. Every
/// <see cref="Interval"/>-th step is a SAM step; the others evaluate the closure once and step normally.
/// </summary>
/// <remarks>
/// The parameter groups, learning rates and per-parameter state are the base optimizer's (schedulers and checkpoints
/// act on it; see <see cref="IClosureOptimizer"/>). A SAM step costs two forward/backward passes.
/// </remarks>
public sealed class SAMOptimizer : optim.Optimizer, IClosureOptimizer
{
    /// <summary>Wraps <paramref name="baseOptimizer"/>.</summary>
    /// <param name="baseOptimizer">The optimizer that takes the actual step (SGD, Adam, …).</param>
    /// <param name="rho">ρ ≥ 0, the radius of the neighbourhood (in the units of the weights). Default 0.05.</param>
    /// <param name="epsilon">ε &gt; 0 added to the gradient norm. Default 1e-12.</param>
    /// <param name="interval">Every how many steps to do a SAM step (≥ 1). Default 1.</param>
    /// <param name="stepsDone">Steps already taken (a resumed run's batch count), so the interval keeps its phase.</param>
    /// <exception cref="ArgumentOutOfRangeException">A value outside its range.</exception>
    public SAMOptimizer(optim.Optimizer baseOptimizer, double rho = 0.05, double epsilon = 1e-12, int interval = 1, long stepsDone = 0)
        : base(IntPtr.Zero)
    {
        ArgumentNullException.ThrowIfNull(baseOptimizer);
        SAM.Check(rho, epsilon, interval);
        ArgumentOutOfRangeException.ThrowIfNegative(stepsDone);
        BaseOptimizer = baseOptimizer;
        Rho = rho;
        Epsilon = epsilon;
        Interval = interval;
        GlobalStep = stepsDone;
    }

    /// <inheritdoc/>
    public optim.Optimizer BaseOptimizer { get; }

    /// <summary>ρ, the neighbourhood radius.</summary>
    public double Rho { get; }

    /// <summary>ε, added to the gradient norm.</summary>
    public double Epsilon { get; }

    /// <summary>Every how many steps a SAM step is taken.</summary>
    public int Interval { get; }

    /// <summary>Steps taken (SAM or not).</summary>
    public long GlobalStep { get; private set; }

    /// <summary>The base optimizer's parameter groups.</summary>
    public override IEnumerable<optim.ILearningRateController> ParamGroups => BaseOptimizer.ParamGroups;

    /// <summary>The base optimizer's parameters.</summary>
    public override IEnumerable<Parameter> parameters() => BaseOptimizer.parameters();

    /// <summary>Zeroes the base optimizer's gradients.</summary>
    public override void zero_grad() => BaseOptimizer.zero_grad();

    /// <summary>Adds the group to the base optimizer.</summary>
    public override void add_param_group(ParamGroup param_group) => BaseOptimizer.add_param_group(param_group);

    /// <summary>
    /// One step (Composer's <c>SAMOptimizer.step</c>). <paramref name="closure"/> must zero the gradients, run the
    /// forward and backward of the whole batch and return its loss; it is called twice on a SAM step.
    /// </summary>
    /// <returns>The loss of the first evaluation (at the unperturbed weights).</returns>
    /// <exception cref="InvalidOperationException">No closure.</exception>
    public override Tensor step(Func<Tensor> closure = null!)
    {
        if (closure is null)
        {
            throw new InvalidOperationException("SAM needs a closure that re-evaluates the loss and gradients; the Trainer passes one to an IClosureOptimizer.");
        }

        Tensor loss;
        if ((GlobalStep + 1) % Interval == 0)
        {
            loss = closure();
            List<(Parameter P, Tensor E)> perturbation = Climb();
            try
            {
                closure();
            }
            finally
            {
                using var noGrad = torch.no_grad();
                foreach ((Parameter p, Tensor e) in perturbation)
                {
                    p.sub_(e);
                    e.Dispose();
                }
            }

            BaseOptimizer.step();
        }
        else
        {
            loss = closure();
            BaseOptimizer.step();
        }

        GlobalStep++;
        return loss;
    }

    /// <summary>Moves each parameter with a gradient by e = ρ·g / (‖g‖ + ε); returns the moves, to be undone.</summary>
    private List<(Parameter P, Tensor E)> Climb()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        List<Parameter> withGrad = BaseOptimizer.parameters().Where(p => p.grad is not null).ToList();
        var moves = new List<(Parameter, Tensor)>(withGrad.Count);
        if (withGrad.Count == 0)
        {
            return moves;
        }

        Tensor norm = torch.stack(withGrad.Select(p => p.grad!.norm()).ToArray()).norm();
        Tensor scale = Rho / (norm + Epsilon);
        foreach (Parameter p in withGrad)
        {
            Tensor e = (p.grad! * scale.to(p.dtype)).DetachFromDisposeScope();
            p.add_(e);
            moves.Add((p, e));
        }

        return moves;
    }
}
